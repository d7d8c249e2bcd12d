"""One function per figure type of the paper. Each takes tidy DataFrames (build them with
:mod:`finessl_lab.diagnostics.frames`, from recorded tables, or by hand), returns a matplotlib Figure, seaborn
styled, with title, axis labels, legend and a footnote naming backbone and dataset (``note=``; by default taken
from the frame's ``note`` column, or from its ``backbone`` and ``dataset`` columns) so that an embedded figure
is never mistaken for a CLIP one. Save with ``finessl_lab.io.save_figure(fig, path)``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .diagnostics import metrics as M
from .errors import UserError

STATUS_ORDER = ["correct", "wrong", "ood"]
STATUS_COLORS = {"correct": "#2a9d8f", "wrong": "#e76f51", "ood": "#6c757d"}


def _need(frame, columns, what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{what} takes a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{what}: the frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise UserError(f"{what}: the frame is empty")
    return frame


def default_note(frame: pd.DataFrame | None = None) -> str:
    """The footnote: the frame's ``note`` column (or attrs['note']), else its backbone / dataset columns."""
    if frame is not None:
        if "note" in frame.columns:
            notes = list(dict.fromkeys(frame["note"].dropna().astype(str)))
            if notes:
                return "; ".join(notes)
        if frame.attrs.get("note"):
            return str(frame.attrs["note"])
        parts = [f"{c}: {', '.join(map(str, dict.fromkeys(frame[c].dropna())))}" for c in ("backbone", "dataset")
                 if c in frame.columns]
        if parts:
            return "; ".join(parts)
    return "backbone and dataset not stated (pass note=...)"


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 3.8, **kw):
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.5), squeeze=False, **kw)
    return fig, axes


def _finish(fig, title: str, note: str):
    fig.suptitle(title, fontsize=13)
    fig.text(0.01, 0.005, note, fontsize=8, color="0.35", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def _seeds(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return f"{lo} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"


def _hue(frame: pd.DataFrame, col: str = "method"):
    return col if col in frame.columns and frame[col].nunique() > 0 else None


def pseudo_label_distribution(frame: pd.DataFrame, note: str | None = None, value: str = "count",
                              title: str = "Pseudo-label class distribution (sorted)") -> plt.Figure:
    """The paper's Figs 2/3: per method, the share of pseudo-labels per class, classes sorted from most to least
    pseudo-labelled (a flat line = balanced, a steep one = biased). ``frame``: columns ``method``, ``class``,
    ``count`` (e.g. :func:`~finessl_lab.diagnostics.frames.pseudo_label_counts`, or a recorded
    ``class_distribution`` table with a method column; with an ``epoch`` column the last epoch is used; counts
    are summed over seeds). A dashed line marks the uniform share 1/C."""
    f = _need(frame, ["class", value], "pseudo_label_distribution").copy()
    if "method" not in f.columns:
        f["method"] = "run"
    if "epoch" in f.columns:
        f = f[f["epoch"] == f.groupby("method")["epoch"].transform("max")]
    g = f.groupby(["method", "class"], sort=False)[value].sum().reset_index()
    g["share"] = g[value] / g.groupby("method")[value].transform("sum")
    g["rank"] = g.groupby("method")["share"].rank(method="first", ascending=False).astype(int)
    fig, axes = _figure(width=6.0)
    ax = axes[0, 0]
    sns.lineplot(data=g, x="rank", y="share", hue="method", marker="o", ax=ax)
    c = g["class"].nunique()
    ax.axhline(1.0 / c, ls="--", color="0.4", lw=1, label=f"uniform (1/{c})")
    ax.set_xlabel("class rank (most to least pseudo-labelled)")
    ax.set_ylabel("share of pseudo-labels")
    ax.legend(title="method")
    return _finish(fig, title, note or default_note(frame))


def confidence_vs_labels(frame: pd.DataFrame, note: str | None = None, x: str = "labels_per_class",
                         y: str = "confidence", title: str = "Average confidence vs number of labels") -> plt.Figure:
    """Fig 1-type: average confidence (y, e.g. mean max-probability on the test or unlabeled set, one value per
    run) against the number of labels per class (x), one line per method, mean +- std over seeds
    (:func:`~finessl_lab.diagnostics.frames.summary_frame` gives both columns)."""
    f = _need(frame, [x, y], "confidence_vs_labels")
    fig, axes = _figure()
    ax = axes[0, 0]
    sns.lineplot(data=f, x=x, y=y, hue=_hue(f), marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log", base=2) if f[x].nunique() > 2 and f[x].min() > 0 else None
    ax.set_xticks(sorted(f[x].unique()))
    ax.set_xticklabels([str(v) for v in sorted(f[x].unique())])
    ax.set_xlabel("labels per class (N)")
    ax.set_ylabel("average confidence")
    if ax.get_legend() is not None:
        ax.legend(title="method")
    return _finish(fig, title, note or default_note(frame))


def training_curves(frame: pd.DataFrame, note: str | None = None, accuracy: str = "pl_acc",
                    entropy: str = "pl_entropy", title: str = "Pseudo-labels during training") -> plt.Figure:
    """Two panels over epochs, one line per method (mean +- std over seeds): pseudo-label accuracy (%) and
    pseudo-label entropy. ``frame``: metrics.csv rows with ``method``, ``epoch``, ``pl_acc``, ``pl_entropy``
    (:func:`~finessl_lab.diagnostics.frames.training_frame`); the trainer's ``pl_entropy`` is normalised by
    log C (1 = balanced)."""
    f = _need(frame, ["epoch", accuracy, entropy], "training_curves")
    fig, axes = _figure(ncols=2)
    for ax, col, label in ((axes[0, 0], accuracy, "pseudo-label accuracy (%)"),
                           (axes[0, 1], entropy, "pseudo-label entropy" + (" (/ log C)" if entropy == "pl_entropy" else ""))):
        sns.lineplot(data=f, x="epoch", y=col, hue=_hue(f), marker="o", errorbar="sd", ax=ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        if ax.get_legend() is not None:
            ax.legend(title="method")
    return _finish(fig, title, note or default_note(frame))


def confidence_histograms(frame: pd.DataFrame, note: str | None = None, bins: int = 20,
                          title: str = "Confidence of correct, wrong and OOD pseudo-labels") -> plt.Figure:
    """The paper's Figs 4 and 8: per head (columns) and method (rows), histograms (density) of the confidence of
    samples whose main-head prediction is correct, wrong or OOD; each panel's title gives the AUROC of correct vs
    wrong. ``frame``: ``head``, ``confidence``, ``status`` ('correct' / 'wrong' / 'ood') and optionally
    ``method`` (:func:`~finessl_lab.diagnostics.frames.confidence_frame`)."""
    f = _need(frame, ["head", "confidence", "status"], "confidence_histograms")
    bad = set(f["status"]) - set(STATUS_ORDER)
    if bad:
        raise UserError(f"confidence_histograms: unknown status {sorted(bad)}; valid: {', '.join(STATUS_ORDER)}")
    methods = list(dict.fromkeys(f["method"])) if "method" in f.columns else [None]
    heads = [h for h in ("main", "aux") if h in set(f["head"])] + sorted(set(f["head"]) - {"main", "aux"})
    fig, axes = _figure(ncols=len(heads), nrows=len(methods), height=3.4)
    edges = np.linspace(0, 1, bins + 1)
    for i, m in enumerate(methods):
        for j, h in enumerate(heads):
            ax = axes[i, j]
            sub = f[(f["head"] == h) & ((f["method"] == m) if m is not None else True)]
            if sub.empty:
                ax.set_axis_off()
                continue
            present = [s for s in STATUS_ORDER if (sub["status"] == s).any()]
            sns.histplot(data=sub, x="confidence", hue="status", hue_order=present, bins=edges, stat="density",
                         common_norm=False, element="step", palette=STATUS_COLORS, ax=ax)
            ind = sub[sub["status"] != "ood"]
            auroc = M.separation_auroc(ind["confidence"], ind["status"] == "correct")
            ax.set_title(f"{m + ' - ' if m else ''}{h} head (AUROC correct vs wrong {auroc:.3f})", fontsize=10)
            ax.set_xlabel("confidence (max probability)")
            ax.set_ylabel("density")
            ax.set_xlim(0, 1)
    return _finish(fig, title, note or default_note(frame))


def confidence_vs_class_accuracy(frame: pd.DataFrame, note: str | None = None,
                                 title: str = "Per-class confidence vs per-class accuracy") -> plt.Figure:
    """One point per class (and run), x = mean confidence of the class's samples, y = class accuracy (%), hue =
    method, marker = head; the dashed diagonal is perfect calibration. ``frame``: ``class``, ``accuracy`` (%),
    ``confidence`` and optionally ``method``, ``head`` (:func:`~finessl_lab.diagnostics.frames.class_accuracy_frame`,
    or a recorded ``class_accuracy`` table)."""
    f = _need(frame, ["accuracy", "confidence"], "confidence_vs_class_accuracy")
    fig, axes = _figure()
    ax = axes[0, 0]
    style = "head" if "head" in f.columns and f["head"].nunique() > 1 else None
    sns.scatterplot(data=f, x="confidence", y="accuracy", hue=_hue(f), style=style, s=45, ax=ax)
    ax.plot([0, 1], [0, 100], ls="--", color="0.4", lw=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 102)
    ax.set_xlabel("mean confidence of the class's samples")
    ax.set_ylabel("class accuracy (%)")
    ax.legend(fontsize=8)
    return _finish(fig, title, note or default_note(frame))


def reliability_diagram(frame_or_table: pd.DataFrame, note: str | None = None, n_bins: int = 15,
                        title: str = "Reliability diagram") -> plt.Figure:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration, the gap shaded, ECE in the
    title. Takes a :func:`~finessl_lab.diagnostics.metrics.reliability_table` (``lo``, ``hi``, ``count``,
    ``accuracy``, ``confidence``) or per-sample rows with ``confidence`` and ``correct`` (e.g.
    ``run.predict('test')``), then binned into ``n_bins``; with a ``head`` column one panel per head."""
    f = frame_or_table
    if not isinstance(f, pd.DataFrame):
        raise UserError(f"reliability_diagram takes a pandas DataFrame, got {type(f).__name__}")
    is_table = {"lo", "hi", "count", "accuracy", "confidence"} <= set(f.columns)
    if not is_table:
        _need(f, ["confidence", "correct"], "reliability_diagram")
    groups = [(h, f[f["head"] == h]) for h in dict.fromkeys(f["head"])] if "head" in f.columns and not is_table \
        else [(None, f)]
    fig, axes = _figure(ncols=len(groups), width=4.4, height=4.2)
    eces = []
    for ax, (head, sub) in zip(axes[0], groups):
        t = sub if is_table else M.reliability_table(sub["confidence"], sub["correct"], n_bins)
        n = t["count"].sum()
        full = t[t["count"] > 0]
        ece = float((full["count"] / n * (full["accuracy"] - full["confidence"]).abs()).sum()) if n else np.nan
        eces.append((head, ece))
        width = (t["hi"] - t["lo"]).to_numpy()
        ax.bar(t["lo"], t["accuracy"].fillna(0), width=width, align="edge", color="#457b9d", edgecolor="white",
               label="accuracy")
        ax.bar(full["lo"], full["confidence"] - full["accuracy"], bottom=full["accuracy"],
               width=(full["hi"] - full["lo"]), align="edge", fill=False, hatch="///", edgecolor="#e63946",
               lw=0.8, label="gap to calibration")
        ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{head + ' head: ' if head else ''}ECE = {100 * ece:.2f}%", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    if len(groups) == 1:
        title = f"{title} (ECE = {100 * eces[0][1]:.2f}%)"
    else:
        title = f"{title} (ECE " + ", ".join(f"{h}: {100 * e:.2f}%" for h, e in eces) + ")"
    return _finish(fig, title, note or default_note(f))


def sensitivity(frame: pd.DataFrame, param: str, metric: str = "test_top1", note: str | None = None,
                title: str | None = None) -> plt.Figure:
    """Hyper-parameter sensitivity: ``metric`` against ``param``, one line per method, mean with a +- std band
    over seeds (rows with the same method and ``param`` value). ``frame``: one row per run with ``param``,
    ``metric`` and optionally ``method``, ``seed``."""
    f = _need(frame, [param, metric], "sensitivity")
    fig, axes = _figure()
    ax = axes[0, 0]
    sns.lineplot(data=f, x=param, y=metric, hue=_hue(f), marker="o", errorbar="sd", err_style="band", ax=ax)
    ax.set_xlabel(param)
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if metric.endswith("top1") else ""))
    if ax.get_legend() is not None:
        ax.legend(title="method")
    n = f.groupby([c for c in ("method", param) if c in f.columns]).size()
    return _finish(fig, title or f"Sensitivity of {metric} to {param} (band: +-1 std over {_seeds(n)})",
                   note or default_note(frame))


def _label_bars(ax) -> None:
    """Write each bar's mean above its error bar (or above the bar when it has none), not across the bar's
    error-bar line: a bar's error bar is the line seaborn draws centred on the bar (caps included)."""
    tops: dict[float, float] = {}
    for line in ax.lines:
        xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if np.isfinite(xs).any() and np.isfinite(ys).any():  # (with caps: one nan-separated line per bar)
            key = round(float(np.nanmin(xs) + np.nanmax(xs)) / 2, 6)
            tops[key] = max(tops.get(key, -np.inf), float(np.nanmax(ys)))
    lo, hi = ax.get_ylim()
    pad = 0.01 * (hi - lo)
    highest = hi
    for container in ax.containers:
        if not hasattr(container, "datavalues"):
            continue
        for rect, value in zip(container.patches, container.datavalues):
            if not np.isfinite(value):
                continue
            cx = rect.get_x() + rect.get_width() / 2
            y = max(rect.get_height() if value >= 0 else 0.0, tops.get(round(cx, 6), -np.inf)) + pad
            ax.text(cx, y, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
            highest = max(highest, y + 0.06 * (hi - lo))
    ax.set_ylim(lo, highest)


def accuracy_bars(frame: pd.DataFrame, metric: str = "test_top1", x: str = "method", hue: str | None = None,
                  note: str | None = None, title: str | None = None) -> plt.Figure:
    """Bars of the mean ``metric`` per ``x`` (default the method; ``hue`` e.g. 'labels_per_class'), error bars =
    +- 1 sample std over seeds, each bar labelled with its mean. ``frame``: one row per run (e.g. a compare's
    results.csv or :func:`~finessl_lab.diagnostics.frames.summary_frame`)."""
    f = _need(frame, [x, metric], "accuracy_bars")
    fig, axes = _figure(width=max(5.0, 1.2 * f[x].nunique() + 2) + (1.6 if hue else 0.0))
    ax = axes[0, 0]
    sns.barplot(data=f, x=x, y=metric, hue=hue, errorbar="sd", capsize=0.15, ax=ax,
                palette="deep" if hue else None, color=None if hue else "#457b9d")
    _label_bars(ax)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " ") + (" (%)" if metric.endswith("top1") else ""))
    if hue and ax.get_legend() is not None:  # beside the axes: inside, it covered the right-most bars
        ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    counts = f.groupby([c for c in (x, hue) if c]).size()
    return _finish(fig, title or f"{metric.replace('_', ' ')}: mean +- std over {_seeds(counts)}",
                   note or default_note(frame))
