"""Tidy DataFrames from finished runs, in the shapes :mod:`finessl_lab.plots` takes.

Every builder takes runs (run directories, a directory of runs such as a ``compare --out``, or
:class:`~finessl_lab.runs.Run` objects) and returns a long-format frame with ``method`` (the algorithm),
``seed`` and ``note`` (backbone, weights and dataset, for figure footnotes) columns.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as M


def _runs(runs):
    from ..runs import as_runs

    return as_runs(runs)


def _base(run) -> dict:
    return {"method": run.label, "seed": run.config.run.seed, "labels_per_class": run.config.data.labels_per_class,
            "note": run.note}


def pseudo_label_counts(runs, split: str = "unlabeled", view: str = "weak") -> pd.DataFrame:
    """Per run and class: ``count`` and ``fraction`` of the final model's pseudo-labels (main-head arg-max) on the
    unlabeled set (weak view), and ``true_count`` (how many samples really are of that class; only samples whose
    label is known and one of the model's classes count: open-set OOD samples do not, and where no label is known,
    e.g. Semi-Aves' unlabeled set without oracle labels, y_true = -1, ``true_count`` is missing, <NA>)."""
    rows = []
    for run in _runs(runs):
        u = run.predict(split, "main", view=view)
        c = run.experiment.num_classes
        counts = np.bincount(u.pred, minlength=c)
        y = np.asarray(u.y_true)
        known = y[(y >= 0) & (y < c)]
        true = np.bincount(known, minlength=c) if (y >= 0).any() else None
        for k in range(c):
            rows.append({**_base(run), "class": k, "count": int(counts[k]), "fraction": counts[k] / len(u),
                         "true_count": pd.NA if true is None else int(true[k])})
    frame = pd.DataFrame(rows)
    return frame.astype({"true_count": "Int64"}) if len(frame) else frame


def confidence_frame(runs, split: str = "unlabeled", view: str = "weak") -> pd.DataFrame:
    """One row per sample and head: ``head``, ``confidence`` of that head, ``status`` of the MAIN head's
    prediction ('correct', 'wrong' or 'ood'), as in the paper's Figs 4 and 8 (aux rows only for algorithms
    that train an aux head)."""
    frames = []
    for run in _runs(runs):
        main = run.predict(split, "main", view=view)
        status = np.where(main.is_ood, "ood", np.where(main.correct, "correct", "wrong"))
        for head in ("main", "aux") if run.has_aux else ("main",):
            p = main if head == "main" else run.predict(split, "aux", view=view)
            frames.append(pd.DataFrame({**_base(run), "head": head, "index": main["index"],
                                        "confidence": p.confidence.to_numpy(), "status": status,
                                        "correct": main.correct.to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def training_frame(runs) -> pd.DataFrame:
    """metrics.csv of every run (one row per epoch) with method / seed / note columns; ``pl_entropy`` there is
    the normalised entropy of the confident pseudo-labels (1 = balanced)."""
    return pd.concat([run.metrics.assign(**_base(run)) for run in _runs(runs)], ignore_index=True)


def class_accuracy_frame(runs, split: str = "test") -> pd.DataFrame:
    """Per run, head and class: ``accuracy`` (%) of the final model and mean ``confidence`` over that class's
    samples."""
    rows = []
    for run in _runs(runs):
        for head in ("main", "aux") if run.has_aux else ("main",):
            t = run.predict(split, head)
            table = M.per_class_accuracy(t.y_true, t.pred, run.experiment.num_classes)
            conf = t.groupby("y_true")["confidence"].mean()
            for k in table["class"]:
                rows.append({**_base(run), "head": head, "class": int(k), "accuracy": 100 * table["accuracy"][k],
                             "confidence": float(conf.get(k, np.nan))})
    return pd.DataFrame(rows)


def summary_frame(runs) -> pd.DataFrame:
    """summary.json of every run as one row (test_top1, ...) with method / seed / note columns, plus the
    average test confidence of the main head (``confidence``)."""
    rows = []
    for run in _runs(runs):
        t = run.predict("test")
        rows.append({**_base(run), **{k: v for k, v in run.summary.items() if not isinstance(v, dict)},
                     "confidence": float(t.confidence.mean())})
    return pd.DataFrame(rows)
