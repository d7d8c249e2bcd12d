"""One row of diagnostics per finished run: accuracy, calibration and confidence separation of both heads,
and the balance of the final pseudo-labels (``summarize_runs``), plus mean / std over seeds (``aggregate``)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import metrics as M

COLUMNS = ("algorithm", "seed", "dataset", "labels_per_class", "backbone", "test_top1", "test_ece_main",
           "test_ece_aux", "test_auroc_main", "test_auroc_aux", "pl_acc", "pl_auroc_main", "pl_auroc_aux",
           "pl_mask_ratio", "pl_entropy_nats", "pl_entropy_normalized", "pl_entropy_masked_normalized")


def summarize_run(run, n_bins: int = 15) -> dict:
    """The diagnostics of one :class:`~finessl_lab.runs.Run` (see :func:`summarize_runs`)."""
    cfg = run.config
    c = run.experiment.num_classes
    row: dict = {"algorithm": cfg.algorithm.name, "seed": cfg.run.seed, "dataset": cfg.data.dataset,
                 "labels_per_class": cfg.data.labels_per_class, "backbone": cfg.model.backbone}
    test = run.predict("test", "main")
    row["test_top1"] = M.top1(test.y_true, test.pred)
    row["test_ece_main"] = M.expected_calibration_error(test.confidence, test.correct, n_bins)
    row["test_auroc_main"] = M.separation_auroc(test.confidence, test.correct)
    u = run.predict("unlabeled", "main", view="weak")
    pl, ind = u.pred.to_numpy(), ~u.is_ood.to_numpy()
    row["pl_acc"] = 100.0 * float(u.correct.mean())
    row["pl_auroc_main"] = M.separation_auroc(u.confidence[ind], u.correct[ind])
    mask = u.confidence.to_numpy() >= cfg.algorithm.threshold
    row["pl_mask_ratio"] = float(mask.mean())
    row["pl_entropy_nats"] = M.pseudo_label_entropy(pl, c)
    row["pl_entropy_normalized"] = M.normalized_pseudo_label_entropy(pl, c)
    row["pl_entropy_masked_normalized"] = M.normalized_pseudo_label_entropy(np.where(mask, pl, -1), c)
    if run.has_aux:
        ta = run.predict("test", "aux")
        row["test_ece_aux"] = M.expected_calibration_error(ta.confidence, ta.correct, n_bins)
        row["test_auroc_aux"] = M.separation_auroc(ta.confidence, ta.correct)
        ua = run.predict("unlabeled", "aux", view="weak")  # aux confidence scoring the MAIN head's pseudo-labels
        row["pl_auroc_aux"] = M.separation_auroc(ua.confidence[ind], u.correct[ind])
    else:
        row.update(test_ece_aux=math.nan, test_auroc_aux=math.nan, pl_auroc_aux=math.nan)
    return {k: row[k] for k in COLUMNS}


def summarize_runs(run_dirs_or_runs, n_bins: int = 15) -> pd.DataFrame:
    """One row per run (run directories, a directory of runs such as a ``compare --out``, or Run objects):

    * ``test_top1`` (%), ``test_ece_main`` / ``test_ece_aux`` (top-label ECE, fraction, 15 equal-width bins),
      ``test_auroc_main`` / ``test_auroc_aux`` (confidence ranking correct above wrong test predictions);
    * on the unlabeled set, weak view (the first cached weak view), with the final model: pseudo-labels =
      arg-max of the main head; ``pl_acc`` (%), ``pl_auroc_main`` / ``pl_auroc_aux`` = AUROC of the main /
      aux head's confidence separating correct from wrong pseudo-labels (the paper's Figs 4 and 8; the aux head
      scores the main head's pseudo-labels, as FineSSL's psi does), ``pl_mask_ratio`` (confidence >=
      algorithm.threshold), ``pl_entropy_nats`` (natural-log entropy of the pseudo-label class histogram),
      ``pl_entropy_normalized`` (the same / log C) and ``pl_entropy_masked_normalized`` (only the confident
      ones: the definition of metrics.csv's ``pl_entropy``).

    Aux columns are NaN for algorithms that train no aux head."""
    from ..runs import as_runs

    return pd.DataFrame([summarize_run(r, n_bins) for r in as_runs(run_dirs_or_runs)], columns=list(COLUMNS))


def aggregate(frame: pd.DataFrame, by: str = "algorithm") -> pd.DataFrame:
    """Mean and sample std (over seeds) of every numeric column of a :func:`summarize_runs` frame, per ``by``."""
    num = [c for c in frame.columns if c not in (by, "seed", "labels_per_class")
           and pd.api.types.is_numeric_dtype(frame[c])]
    g = frame.groupby(by, sort=False)[num]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
    out["runs"] = frame.groupby(by, sort=False).size()
    return out[[c for k in num for c in (f"{k}_mean", f"{k}_std")] + ["runs"]].reset_index()
