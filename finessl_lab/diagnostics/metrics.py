"""Metrics of calibration, confidence separation and pseudo-label balance, on plain arrays or tensors.

Every function takes 1-d array-likes (numpy arrays, torch tensors, lists, pandas Series) and returns a float or
a tidy DataFrame. Two entropies exist and are named apart:

* :func:`pseudo_label_entropy` = natural-log entropy (nats) of the class histogram, in ``[0, log C]``;
* :func:`normalized_pseudo_label_entropy` = the same divided by ``log C``, in ``[0, 1]``: the trainer's
  ``pl_entropy`` column of metrics.csv (1 = perfectly balanced pseudo-labels).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import UserError

BINNINGS = ("equal_width", "equal_mass")


def _array(name: str, x, dtype=float) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise UserError(f"{name} must be 1-d (one value per sample), got shape {a.shape}")
    return a.astype(dtype)


def _conf_correct(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    c = _array("confidences", confidences)
    k = _array("correct", correct, dtype=bool)
    if len(c) != len(k):
        raise UserError(f"confidences ({len(c)}) and correct ({len(k)}) must have the same length")
    if len(c) and (np.isnan(c).any() or c.min() < 0.0 or c.max() > 1.0):
        raise UserError("confidences must lie in [0, 1] (max softmax probabilities); got values outside it or NaN")
    return c, k


def _check_bins(n_bins: int, binning: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise UserError(f"n_bins={n_bins!r} is not valid; valid: an integer >= 1")
    if binning not in BINNINGS:
        raise UserError(f"binning={binning!r} is not valid; valid: {', '.join(BINNINGS)}")


def _bin_index(c: np.ndarray, n_bins: int, binning: str) -> tuple[np.ndarray, np.ndarray]:
    """(bin of every sample, bin edges [n_bins + 1]). Bins are (lo, hi]; a confidence of exactly 0 (or the
    lowest edge) falls in the first bin."""
    if binning == "equal_width" or len(c) == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:  # equal mass: edges at quantiles of the confidences, first edge 0 and last 1
        edges = np.quantile(c, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        edges = np.maximum.accumulate(edges)
    idx = np.searchsorted(edges, c, side="left") - 1  # (lo, hi]: c == hi goes to the bin that ends at hi
    return np.clip(idx, 0, n_bins - 1), edges


def reliability_table(confidences, correct, n_bins: int = 15, binning: str = "equal_width") -> pd.DataFrame:
    """One row per bin: ``bin``, ``lo``, ``hi`` (bins are (lo, hi]; confidence 0 falls in bin 0), ``count``,
    ``accuracy`` (fraction correct, NaN for an empty bin) and ``confidence`` (mean confidence, NaN if empty)."""
    _check_bins(n_bins, binning)
    c, k = _conf_correct(confidences, correct)
    idx, edges = _bin_index(c, n_bins, binning)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=k.astype(float), minlength=n_bins) / count
        conf = np.bincount(idx, weights=c, minlength=n_bins) / count
    return pd.DataFrame({"bin": np.arange(n_bins), "lo": edges[:-1], "hi": edges[1:], "count": count,
                         "accuracy": acc, "confidence": conf})


def expected_calibration_error(confidences, correct, n_bins: int = 15, binning: str = "equal_width") -> float:
    """Top-label L1 ECE (Guo et al. 2017): sum over bins of |accuracy - mean confidence| x fraction of samples.

    ``confidences`` are max softmax probabilities, ``correct`` whether the arg-max is right. Equal-width bins
    with (lo, hi] edges as torchmetrics' ``calibration_error(norm='l1')`` (confidence exactly 0 falls in the first
    bin), or ``binning='equal_mass'`` (edges at quantiles). Empty bins contribute nothing; an empty input is NaN.
    Returned as a fraction in [0, 1] (multiply by 100 for %)."""
    table = reliability_table(confidences, correct, n_bins, binning)
    n = table["count"].sum()
    if n == 0:
        return math.nan
    full = table[table["count"] > 0]
    return float((full["count"] / n * (full["accuracy"] - full["confidence"]).abs()).sum())


def pseudo_label_entropy(pseudo_labels, num_classes: int) -> float:
    """Natural-log entropy (nats) of the class histogram of ``pseudo_labels``; entries < 0 (no label) are
    ignored. 0 = all one class, log(num_classes) = uniform; NaN if no entry is >= 0.
    (metrics.csv's ``pl_entropy`` is this divided by log C: see :func:`normalized_pseudo_label_entropy`.)"""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"num_classes={num_classes!r} is not valid; valid: an integer >= 1")
    pl = _array("pseudo_labels", pseudo_labels, dtype=np.int64)
    pl = pl[pl >= 0]
    if len(pl) and pl.max() >= num_classes:
        raise UserError(f"pseudo_labels hold class {int(pl.max())} but num_classes={num_classes}; valid: labels < num_classes")
    if not len(pl):
        return math.nan
    p = np.bincount(pl, minlength=num_classes) / len(pl)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def normalized_pseudo_label_entropy(pseudo_labels, num_classes: int) -> float:
    """:func:`pseudo_label_entropy` / log(num_classes), in [0, 1] (the trainer's ``pl_entropy``); NaN for C = 1."""
    h = pseudo_label_entropy(pseudo_labels, num_classes)
    return h / math.log(num_classes) if num_classes > 1 else math.nan


def separation_auroc(confidences, correct) -> float:
    """Area under the ROC curve of ``confidences`` as a score for ``correct`` (True = the positive group: correct
    pseudo-labels vs wrong ones, or in-distribution vs OOD samples): the probability that a random positive has a
    higher confidence than a random negative, ties counting one half. 1 = perfect ranking, 0.5 = none; NaN when
    only one of the two groups is present. The number behind the paper's Figs 4 and 8."""
    c = _array("confidences", confidences)
    k = _array("correct", correct, dtype=bool)
    if len(c) != len(k):
        raise UserError(f"confidences ({len(c)}) and correct ({len(k)}) must have the same length")
    n_pos, n_neg = int(k.sum()), int((~k).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = pd.Series(c).rank(method="average").to_numpy()  # Mann-Whitney U with mid-ranks for ties
    u = ranks[k].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def average_confidence(confidences) -> float:
    """Mean of the confidences (NaN if empty)."""
    c = _array("confidences", confidences)
    return float(c.mean()) if len(c) else math.nan


def per_class_accuracy(y_true, y_pred, num_classes: int | None = None) -> pd.DataFrame:
    """One row per class: ``class``, ``count`` (samples whose true class it is), ``accuracy`` (fraction of them
    predicted right; NaN if the class has no sample) and ``predicted`` (how often it was predicted)."""
    t = _array("y_true", y_true, dtype=np.int64)
    p = _array("y_pred", y_pred, dtype=np.int64)
    if len(t) != len(p):
        raise UserError(f"y_true ({len(t)}) and y_pred ({len(p)}) must have the same length")
    c = int(num_classes) if num_classes is not None else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    keep = t >= 0
    count = np.bincount(t[keep], minlength=c)[:c]
    right = np.bincount(t[keep & (t == p)], minlength=c)[:c]
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = right / count
    return pd.DataFrame({"class": np.arange(c), "count": count, "accuracy": acc,
                         "predicted": np.bincount(p[p >= 0], minlength=c)[:c]})


def group_accuracy(y_true, y_pred, class_counts, many: int = 100, few: int = 20) -> dict[str, float]:
    """Accuracy (fraction) over the classes grouped by their training count: ``many`` (count > many), ``medium``
    (few <= count <= many), ``few`` (count < few) — the long-tail convention (Liu et al. 2019). Each group's
    accuracy is the mean of its per-class accuracies (NaN for an empty group). For head/medium/tail thirds,
    pass counts and thresholds accordingly."""
    counts = _array("class_counts", class_counts, dtype=np.int64)
    table = per_class_accuracy(y_true, y_pred, len(counts))
    groups = {"many": counts > many, "medium": (counts >= few) & (counts <= many), "few": counts < few}
    return {g: float(np.nanmean(table["accuracy"].to_numpy()[sel])) if sel.any() and
            np.isfinite(table["accuracy"].to_numpy()[sel]).any() else math.nan for g, sel in groups.items()}


def top1(y_true, y_pred) -> float:
    """Top-1 accuracy in % (NaN if empty)."""
    t = _array("y_true", y_true, dtype=np.int64)
    p = _array("y_pred", y_pred, dtype=np.int64)
    return float(100.0 * (t == p).mean()) if len(t) else math.nan
