"""Retrain in a loop from the feature cache, for teaching (``notebooks/explore_bias.ipynb``).

:class:`BiasExplorer` builds an experiment once per labels-per-class value (the split changes with it) and then
retrains the heads from fresh initial weights on every call - a slider change costs one short training run on
cached features, not a rebuild. Each call returns tidy frames: the sorted pseudo-label class distribution, the
confidence of correct / wrong / OOD pseudo-labels for each head, and the test reliability table.

The widget (:meth:`BiasExplorer.widget`) draws one :class:`Dashboard`: a matplotlib figure built once whose
artists are updated in place on every change and rendered to one PNG shown in an ``ipywidgets.Image`` - the
picture is replaced, never appended to, and redrawing costs a fraction of building three seaborn figures.
Sliders send their value on release (``continuous_update=False``), so a drag is one retraining, not a queue.
"""
from __future__ import annotations

import io
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .errors import UserError, check_type

KNOBS = {  # name: (config key, lo, hi)
    "zeta": ("algorithm.finessl.zeta", 0.0, 1.0),
    "smoothing": ("algorithm.finessl.smoothing", 0.0, 0.99),
    "alpha_base": ("algorithm.finessl.alpha_base", 0.0, 64.0),
    "gamma": ("algorithm.finessl.gamma", 0.0, 20.0),
    "threshold": ("algorithm.threshold", 0.0, 1.0),
}


SHOWN = ("zeta", "smoothing", "alpha_base", "gamma")  # the knobs the widget has sliders for


def _get(cfg, dotted: str) -> float:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return float(obj)


@dataclass
class Exploration:
    """The frames of one training run of the explorer (all tidy), its settings and how long it took."""
    settings: dict
    distribution: pd.DataFrame   # method, class, count, rank (confident pseudo-labels of the main head)
    confidences: pd.DataFrame    # head, status (correct / wrong / ood), confidence  (unlabeled set, weak view)
    test: pd.DataFrame           # head, confidence, correct                          (test set)
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0


class BiasExplorer:
    """``BiasExplorer().run(algorithm="fixmatch", labels_per_class=1, ...)`` -> :class:`Exploration`."""

    def __init__(self, profile: str = "embedded", steps: int = 100, seed: int = 1, sets=(), max_points: int = 2000):
        from .presets import resolve

        if profile != "embedded":
            raise UserError(f"profile={profile!r}: the explorer retrains from the feature cache, which only the "
                            "embedded profile uses; valid: 'embedded'")
        check_type("steps", steps, int, "an integer >= 10")
        if steps < 10:
            raise UserError(f"steps={steps} is too small; valid: an integer >= 10")
        self.base = resolve("embedded", sets=list(sets))
        self.base.run.seed, self.base.run.progress = seed, False
        self.base.run.epochs, self.base.run.steps_per_epoch = 1, steps
        self._experiments: OrderedDict = OrderedDict()  # the last few splits (each holds the cached features)
        # the confidence histograms use at most this many unlabeled samples (a fixed random subset): drawing
        # 4,000 x 2 heads costs more than the training itself, and 2,000 give the same picture
        self.max_points = max_points

    def config(self, algorithm: str = "finessl", labels_per_class: int = 4, long_tail_ratio: float = 1.0, **knobs):
        """The run's config: ``long_tail_ratio`` rho > 1 makes the labeled and unlabeled sets long-tailed (class k
        gets ``labels_per_class * rho^(-k/9)`` labels, at least 1; the unlabeled set follows the same shape)."""
        import copy

        cfg = copy.deepcopy(self.base)
        cfg.algorithm.name = algorithm
        cfg.data.labels_per_class = labels_per_class
        if isinstance(long_tail_ratio, bool) or not isinstance(long_tail_ratio, (int, float)) or \
                not 1.0 <= long_tail_ratio <= 1000.0:
            raise UserError(f"long_tail_ratio={long_tail_ratio!r} is not valid; valid: a number in [1, 1000] "
                            "(1 = balanced)")
        if long_tail_ratio > 1.0:
            cfg.data.setting, cfg.data.imbalance_labeled = "longtail", float(long_tail_ratio)
        for name, value in knobs.items():
            if name not in KNOBS:
                raise UserError(f"unknown knob {name!r}; valid: {', '.join(KNOBS)}")
            key, lo, hi = KNOBS[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
                raise UserError(f"{name}={value!r} is not valid; valid: a number in [{lo}, {hi}]")
            cfg.set(key, float(value))
        return cfg.validate()

    def experiment(self, cfg):
        from .algorithms import REGISTRY
        from .build import build_experiment

        key = (cfg.data.labels_per_class, cfg.data.setting, cfg.data.imbalance_labeled,
               REGISTRY[cfg.algorithm.name].uses_unlabeled)
        if key not in self._experiments:
            self._experiments[key] = build_experiment(cfg, uses_unlabeled=key[-1], progress=False)
            while len(self._experiments) > 4:
                self._experiments.popitem(last=False)
        self._experiments.move_to_end(key)
        return self._experiments[key]

    def run(self, algorithm: str = "finessl", labels_per_class: int = 4, long_tail_ratio: float = 1.0,
            **knobs) -> Exploration:
        """Retrain from fresh heads with these settings. One intra-op thread: the head-sized tensors gain nothing
        from more, and on a busy 2-core machine a second thread costs ~20% more CPU and more wall time."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(algorithm, labels_per_class, long_tail_ratio, **knobs)
        finally:
            torch.set_num_threads(threads)

    def _run(self, algorithm, labels_per_class, long_tail_ratio, **knobs) -> Exploration:
        from .trainer import Trainer

        cfg = self.config(algorithm, labels_per_class, long_tail_ratio, **knobs)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, experiment=self.experiment(cfg), progress=False)
        summary = trainer.fit()
        e = trainer.exp
        heads = ["main"] + (["aux"] if getattr(trainer.algorithm, "uses_aux", False) else [])
        unl = torch.as_tensor(np.asarray(e.split.unlabeled))
        show = torch.arange(len(unl))
        if len(unl) > self.max_points:
            show = torch.randperm(len(unl), generator=torch.Generator().manual_seed(0))[: self.max_points].sort().values
        y_u = torch.as_tensor(np.asarray(e.split_view.targets))[unl]
        ood_u = torch.as_tensor(np.asarray(e.split_view.ood, dtype=bool))[unl]
        y_t = torch.as_tensor(np.asarray(e.bundle.test.targets))
        conf_rows, rel = [], []
        dist = None
        for head in heads:
            pu = self._probs(trainer, e.features["weak"][0][unl], head)
            cu, pred = pu.max(1)
            status = np.where(ood_u.numpy(), "ood", np.where((pred == y_u).numpy(), "correct", "wrong"))
            conf_rows.append(pd.DataFrame({"head": head, "status": status[show.numpy()],
                                           "confidence": cu[show].numpy()}))
            if head == "main":
                keep = pred[cu >= cfg.algorithm.threshold]
                counts = torch.bincount(keep, minlength=e.num_classes).numpy()
                dist = pd.DataFrame({"method": algorithm, "class": np.arange(e.num_classes), "count": counts})
                dist["rank"] = dist["count"].rank(ascending=False, method="first").astype(int)
            pt = self._probs(trainer, e.features["test"], head)
            ct, predt = pt.max(1)
            rel.append(pd.DataFrame({"head": head, "confidence": ct.numpy(), "correct": (predt == y_t).numpy()}))
        settings = {"algorithm": algorithm, "labels_per_class": labels_per_class,
                    "long_tail_ratio": float(long_tail_ratio), **{k: _get(cfg, KNOBS[k][0]) for k in SHOWN}}
        summary = {"test_top1": summary["test_top1"], "steps": summary["steps"]}
        return Exploration(settings, dist, pd.concat(conf_rows, ignore_index=True), pd.concat(rel, ignore_index=True),
                           summary, time.perf_counter() - t0)

    @staticmethod
    @torch.no_grad()
    def _probs(trainer, x, head: str):
        model = trainer.exp.model
        model.eval()
        h = model.main if head == "main" else model.aux
        return torch.softmax(h(x.float().to(trainer.exp.device)).float(), 1).cpu()

    # -- drawing and widgets -------------------------------------------------------------------------------
    def figures(self, result: Exploration) -> list:
        """The three figures of one run: sorted pseudo-label distribution, confidence histograms of both heads,
        reliability diagram (test set)."""
        from . import plots

        note = describe(result)
        return [plots.pseudo_label_distribution(result.distribution, note=note),
                plots.confidence_histograms(result.confidences.assign(method=result.settings["algorithm"]), note=note),
                plots.reliability_diagram(result.test, note=note)]

    def widget(self, initial_result: Exploration | None = None, **initial):
        """ipywidgets UI: on every change, retrain from the feature cache and redraw the :class:`Dashboard` (the
        one of ``initial_result`` is shown until the first change)."""
        import ipywidgets as w

        from .algorithms import REGISTRY

        v = {"algorithm": "finessl", "labels_per_class": 4, "long_tail_ratio": 1.0, "zeta": 0.7, "smoothing": 0.5,
             "alpha_base": 8.0, "gamma": 3.0, **(initial_result.settings if initial_result else {}), **initial}
        slider = dict(continuous_update=False, style={"description_width": "105px"})
        controls = {
            "algorithm": w.Dropdown(options=sorted(REGISTRY), value=v["algorithm"], description="algorithm",
                                    style=slider["style"]),
            "labels_per_class": w.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=v["labels_per_class"],
                                                  description="labels/class", **slider),
            "long_tail_ratio": w.SelectionSlider(options=[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0],
                                                 value=float(v["long_tail_ratio"]), description="long-tail ratio",
                                                 **slider),
            "zeta": w.FloatSlider(value=v["zeta"], min=0.3, max=0.99, step=0.05, description="zeta", **slider),
            "smoothing": w.FloatSlider(value=v["smoothing"], min=0.0, max=0.9, step=0.1, description="lambda",
                                       **slider),
            "alpha_base": w.FloatSlider(value=v["alpha_base"], min=0.0, max=16.0, step=1.0, description="alpha_base",
                                        **slider),
            "gamma": w.FloatSlider(value=v["gamma"], min=0.0, max=6.0, step=0.5, description="gamma", **slider),
        }
        dashboard = Dashboard()
        image = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto"))
        status = w.HTML()

        def redraw(*_):
            values = {k: c.value for k, c in controls.items()}
            status.value = "retraining ..."
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                result = self.run(values.pop("algorithm"), values.pop("labels_per_class"), **values)
                image.value = dashboard.png(result)
            except Exception as exc:  # noqa: BLE001 - shown to the student instead of vanishing into the log
                status.value = f"<b>error:</b> {type(exc).__name__}: {exc}"
                return
            status.value = (f"{_settings_line(result.settings)}: test top-1 {result.summary['test_top1']:.1f}%; "
                            f"retrained and redrawn in {time.perf_counter() - t0:.2f} s "
                            f"({time.process_time() - c0:.2f} CPU-s in the kernel)")

        for c in controls.values():
            c.observe(redraw, names="value")
        names = list(controls)
        ui = w.VBox([w.HBox([controls[k] for k in names[:4]]), w.HBox([controls[k] for k in names[4:]]), status,
                     image])
        ui.add_class("finessl-explorer")
        if initial_result is None:
            redraw()
        else:
            image.value = dashboard.png(initial_result)
            status.value = (f"{_settings_line(initial_result.settings)}: test top-1 "
                            f"{initial_result.summary['test_top1']:.1f}%; move a control to retrain")
        self.controls, self.image, self.status = controls, image, status  # for tests and scripting
        return ui


EMBEDDED_NOTE = "MNIST-5k + EfficientNet-Lite0 features (embedded profile, not CLIP)"
STATUS_COLORS = {"correct": "#2a9d8f", "wrong": "#e76f51", "ood": "#6c757d"}
HEAD_COLORS = {"main": "#1d3557", "aux": "#e9a23b"}


def _settings_line(s: dict) -> str:
    names = {"labels_per_class": "labels/class", "long_tail_ratio": "long-tail ratio", "smoothing": "lambda"}
    return ", ".join(f"{names.get(k, k)}={v:g}" if isinstance(v, float) else f"{names.get(k, k)}={v}"
                     for k, v in s.items())


def describe(result: Exploration) -> str:
    s = result.settings
    lt = s.get("long_tail_ratio", 1.0)
    return (f"{s['algorithm']}, N={s['labels_per_class']}/class" + (f", long-tail ratio {lt:g}" if lt > 1 else "")
            + f", test top-1 {result.summary['test_top1']:.1f}%; {EMBEDDED_NOTE}")


class Dashboard:
    """The explorer's picture: one figure, built once, four panels - (a) confident pseudo-labels per class of the
    main head, sorted (aggregated bias), (b, c) confidence histograms of correct / wrong / OOD pseudo-labels of
    the main and aux heads (cognitive deviation), (d) the test reliability diagram of both heads. :meth:`png`
    updates the artists' data in place and renders one PNG (no layout pass, no new figure)."""

    def __init__(self, bins: int = 20, n_bins: int = 10, dpi: int = 72, num_classes: int = 10):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.dpi, self.edges, self.rel_edges = dpi, np.linspace(0, 1, bins + 1), np.linspace(0, 1, n_bins + 1)
        fig = Figure(figsize=(12.5, 7.6), dpi=dpi)
        FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.06, right=0.985, bottom=0.1, top=0.87, wspace=0.22, hspace=0.42)
        (a, b), (c, d) = fig.subplots(2, 2)
        self.fig, self.ax = fig, {"dist": a, "main": b, "aux": c, "rel": d}
        self.title = fig.suptitle("", fontsize=13)
        self.note = fig.text(0.01, 0.01, "", fontsize=9, color="0.35")
        k = np.arange(num_classes)
        self.bars = a.bar(k, np.zeros(num_classes), color="#457b9d")
        a.set_xticks(k)
        a.set_xlabel("class (sorted by number of pseudo-labels)")
        a.set_ylabel("confident pseudo-labels")
        self.dist_title = a.set_title("", fontsize=11)
        self.steps = {}
        for head in ("main", "aux"):
            ax = self.ax[head]
            for st, color in STATUS_COLORS.items():
                label = st if st != "ood" else "ood (open-set only)"
                self.steps[head, st] = ax.stairs(np.zeros(bins), self.edges, color=color, lw=2, label=label,
                                                 baseline=None)
            ax.set_xlim(0, 1)
            ax.set_xlabel("confidence (max probability), unlabeled set")
            ax.set_ylabel("density")
            ax.legend(loc="upper left", fontsize=9)
        self.head_title = {h: self.ax[h].set_title("", fontsize=11) for h in ("main", "aux")}
        self.no_aux = c.text(0.5, 0.5, "", ha="center", va="center", transform=c.transAxes, fontsize=11, color="0.3")
        d.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        self.rel = {h: d.stairs(np.zeros(n_bins), self.rel_edges, color=col, lw=2, baseline=None, label=f"{h} head")
                    for h, col in HEAD_COLORS.items()}
        d.set_xlim(0, 1)
        d.set_ylim(0, 1.02)
        d.set_xlabel("confidence, test set")
        d.set_ylabel("accuracy per confidence bin")
        self.rel_legend_texts = d.legend(loc="upper left", fontsize=9).get_texts()
        self.rel_title = d.set_title("(d) reliability diagram (test set)", fontsize=11)

    def update(self, result: Exploration) -> None:
        from .diagnostics import metrics as M

        s = result.settings
        dist = result.distribution.sort_values("rank")
        counts = dist["count"].to_numpy()
        for bar, n in zip(self.bars, counts):
            bar.set_height(n)
        a = self.ax["dist"]
        a.set_xticks(np.arange(len(counts)), [str(c) for c in dist["class"]])
        a.set_ylim(0, max(1, counts.max()) * 1.1)
        ratio = counts.max() / max(counts.min(), 1)
        self.dist_title.set_text(f"(a) aggregated bias: {counts.sum()} confident pseudo-labels (main head), "
                                 f"max/min {ratio:.1f}")
        conf = result.confidences
        for head in ("main", "aux"):
            ax, sub = self.ax[head], conf[conf["head"] == head]
            ymax = 1.0
            for st in STATUS_COLORS:
                x = sub.loc[sub["status"] == st, "confidence"].to_numpy()
                h = np.histogram(x, self.edges, density=True)[0] if len(x) else np.zeros(len(self.edges) - 1)
                self.steps[head, st].set_data(h, self.edges)
                self.steps[head, st].set_visible(len(x) > 0)
                ymax = max(ymax, h.max() if len(x) else 0)
            ax.set_ylim(0, ymax * 1.08)
            letter = "(b)" if head == "main" else "(c)"
            if sub.empty:
                self.head_title[head].set_text(f"{letter} {head} head")
                self.no_aux.set_text(f"{s['algorithm']} has no auxiliary head\n(FineSSL trains one with "
                                     "Decoupled Label Smoothing)")
            else:
                ind = sub[sub["status"] != "ood"]
                auroc = M.separation_auroc(ind["confidence"], ind["status"] == "correct")
                self.head_title[head].set_text(f"{letter} cognitive deviation, {head} head: "
                                               f"AUROC correct vs wrong {auroc:.3f}")
                if head == "aux":
                    self.no_aux.set_text("")
        test = result.test
        for i, head in enumerate(("main", "aux")):
            sub = test[test["head"] == head]
            label = f"{head} head"
            if sub.empty:
                self.rel[head].set_visible(False)
                label += ": none"
            else:
                t = M.reliability_table(sub["confidence"], sub["correct"], len(self.rel_edges) - 1)
                n = t["count"].sum()
                full = t[t["count"] > 0]
                ece = float((full["count"] / n * (full["accuracy"] - full["confidence"]).abs()).sum())
                self.rel[head].set_data(t["accuracy"].fillna(0).to_numpy(), self.rel_edges)
                self.rel[head].set_visible(True)
                label += f" (ECE {100 * ece:.1f}%)"
            self.rel_legend_texts[i + 1].set_text(label)
        self.title.set_text(f"{_settings_line(s)}  ->  test top-1 {result.summary['test_top1']:.1f}%")
        self.note.set_text(f"retrained from fresh heads on cached features ({result.summary['steps']} steps); "
                           f"{EMBEDDED_NOTE}")

    def png(self, result: Exploration) -> bytes:
        self.update(result)
        buf = io.BytesIO()
        self.fig.canvas.print_png(buf)
        return buf.getvalue()
