"""The diagnostics metrics on hand-computed inputs."""
import math

import numpy as np
import pytest
import torch

from finessl_lab.diagnostics import metrics as M
from finessl_lab.errors import UserError


def torchmetrics_ece(conf, correct, n_bins):
    """torchmetrics' binary/multiclass calibration_error(norm='l1') binning, re-stated (torchmetrics is not a
    dependency): bucketize(right=True) - 1 over linspace(0, 1, n_bins + 1), weighted |acc - conf|."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    acc = torch.as_tensor(correct, dtype=torch.float64)
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, bounds, right=True) - 1
    count = torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    cbin = torch.nan_to_num(torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, conf) / count)
    abin = torch.nan_to_num(torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, acc) / count)
    return float(((abin - cbin).abs() * count / count.sum()).sum())


def test_ece_hand_computed():
    # bins of width 0.5: (0, .5] holds 0.2 (wrong) and 0.4 (right): acc .5, conf .3; (.5, 1] holds .9 (right)
    conf, correct = [0.2, 0.4, 0.9], [False, True, True]
    assert M.expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(2 / 3 * 0.2 + 1 / 3 * 0.1)
    t = M.reliability_table(conf, correct, n_bins=2)
    assert list(t["count"]) == [2, 1] and t["accuracy"].tolist() == pytest.approx([0.5, 1.0])
    assert t["confidence"].tolist() == pytest.approx([0.3, 0.9]) and t["hi"].tolist() == [0.5, 1.0]


def test_ece_edges_exact_zero_one_and_empty_bins():
    # 1.0 falls in the last bin (lo, hi], 0.0 in the first; 0.5 belongs to (0.25, 0.5] with 4 bins
    t = M.reliability_table([0.0, 1.0, 0.5], [False, True, True], n_bins=4)
    assert list(t["count"]) == [1, 1, 0, 1]
    assert math.isnan(t["accuracy"][2]) and math.isnan(t["confidence"][2])  # empty bin
    assert M.expected_calibration_error([0.0, 1.0, 0.5], [False, True, True], n_bins=4) == pytest.approx(0.5 / 3)
    assert M.expected_calibration_error([1.0], [True]) == 0.0  # one sample, perfectly calibrated
    assert M.expected_calibration_error([1.0], [False]) == 1.0
    assert M.expected_calibration_error([0.0], [False]) == 0.0
    assert math.isnan(M.expected_calibration_error([], []))


def test_ece_matches_torchmetrics_definition_off_bin_edges():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.05, 0.999, 500)
    conf = conf[np.abs(conf * 15 - np.round(conf * 15)) > 1e-6]  # no value on an edge
    correct = rng.uniform(size=len(conf)) < conf ** 2
    assert M.expected_calibration_error(conf, correct, 15) == pytest.approx(torchmetrics_ece(conf, correct, 15), abs=1e-12)
    # torch tensors in, same answer
    assert M.expected_calibration_error(torch.as_tensor(conf), torch.as_tensor(correct), 15) == pytest.approx(
        torchmetrics_ece(conf, correct, 15))


def test_ece_equal_mass_bins_and_bad_input():
    conf, correct = [0.1, 0.2, 0.8, 0.9], [False, False, True, True]
    t = M.reliability_table(conf, correct, n_bins=2, binning="equal_mass")
    assert list(t["count"]) == [2, 2]
    assert M.expected_calibration_error(conf, correct, 2, binning="equal_mass") == pytest.approx(0.5 * 0.15 + 0.5 * 0.15)
    with pytest.raises(UserError, match="binning"):
        M.expected_calibration_error(conf, correct, binning="quantile")
    with pytest.raises(UserError, match="n_bins"):
        M.expected_calibration_error(conf, correct, n_bins=0)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        M.expected_calibration_error([1.5], [True])
    with pytest.raises(UserError, match="same length"):
        M.expected_calibration_error([0.5, 0.5], [True])


def test_pseudo_label_entropy_natural_log_and_normalised():
    assert M.pseudo_label_entropy([0, 1, 2, 3], 4) == pytest.approx(math.log(4))
    assert M.pseudo_label_entropy([1, 1, 1, -1, -1], 4) == 0.0  # -1 = no label, ignored
    assert M.pseudo_label_entropy([0, 0, 1, -1], 3) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert M.normalized_pseudo_label_entropy([0, 1, 2, 3], 4) == pytest.approx(1.0)
    assert M.normalized_pseudo_label_entropy([0, 1], 4) == pytest.approx(0.5)
    assert math.isnan(M.pseudo_label_entropy([-1, -1], 3))
    with pytest.raises(UserError, match="num_classes"):
        M.pseudo_label_entropy([5], 3)
    # agrees with the trainer's normalised pl_entropy
    from finessl_lab.hooks import class_entropy

    pl = [0, 0, 1, 2, 2, 2]
    assert M.normalized_pseudo_label_entropy(pl, 5) == pytest.approx(class_entropy(torch.bincount(torch.tensor(pl), minlength=5)))


def test_separation_auroc():
    assert M.separation_auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert M.separation_auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert M.separation_auroc([0.5, 0.5], [True, False]) == 0.5  # ties count one half
    # 3 positives, 2 negatives: pairs won = (0.9 > 0.4, 0.2) + (0.6 > 0.4, 0.2) + (0.3 > 0.2) = 5 of 6
    assert M.separation_auroc([0.9, 0.6, 0.3, 0.4, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    # the keyword names of the signature separation_auroc(confidences, correct)
    assert M.separation_auroc(confidences=[0.9, 0.6, 0.3, 0.4, 0.2], correct=[1, 1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert math.isnan(M.separation_auroc([0.9, 0.8], [True, True]))
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    c, k = rng.uniform(size=200).round(2), rng.uniform(size=200) < 0.6
    assert M.separation_auroc(c, k) == pytest.approx(sklearn.roc_auc_score(k, c))


def test_per_class_group_accuracy_and_average_confidence():
    t = M.per_class_accuracy([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 0], num_classes=4)
    assert t["count"].tolist() == [2, 3, 1, 0] and t["predicted"].tolist() == [3, 3, 0, 0]
    assert t["accuracy"][:3].tolist() == pytest.approx([0.5, 2 / 3, 0.0]) and math.isnan(t["accuracy"][3])
    g = M.group_accuracy([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 0], class_counts=[500, 50, 5, 0], many=100, few=20)
    assert g["many"] == 0.5 and g["medium"] == pytest.approx(2 / 3) and g["few"] == 0.0
    assert M.average_confidence([0.2, 0.4]) == pytest.approx(0.3)
    assert M.top1([1, 2, 3, 4], [1, 2, 0, 0]) == 50.0
