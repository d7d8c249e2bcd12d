"""Retrain in a loop from the feature cache, for teaching (``notebooks/explore_bias.ipynb``).

:class:`BiasExplorer` builds an experiment once per labels-per-class value (the split changes with it) and then
retrains the heads from fresh initial weights on every call - a slider change costs one short training run on
cached features, not a rebuild. Each call returns tidy frames: the sorted pseudo-label class distribution, the
confidence of correct / wrong / OOD pseudo-labels for each head, and the test reliability table.
"""
from __future__ import annotations

import time
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
        self._experiments: dict = {}
        # the confidence histograms use at most this many unlabeled samples (a fixed random subset): drawing
        # 4,000 x 2 heads costs more than the training itself, and 2,000 give the same picture
        self.max_points = max_points

    def config(self, algorithm: str = "finessl", labels_per_class: int = 4, **knobs):
        import copy

        cfg = copy.deepcopy(self.base)
        cfg.algorithm.name = algorithm
        cfg.data.labels_per_class = labels_per_class
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

        key = (cfg.data.labels_per_class, REGISTRY[cfg.algorithm.name].uses_unlabeled)
        if key not in self._experiments:
            self._experiments[key] = build_experiment(cfg, uses_unlabeled=key[1], progress=False)
        return self._experiments[key]

    def run(self, algorithm: str = "finessl", labels_per_class: int = 4, **knobs) -> Exploration:
        from .trainer import Trainer

        cfg = self.config(algorithm, labels_per_class, **knobs)
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
        settings = {"algorithm": algorithm, "labels_per_class": labels_per_class, **knobs}
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

        s = result.settings
        note = (f"{s['algorithm']}, N={s['labels_per_class']}/class, test top-1 {result.summary['test_top1']:.1f}%; "
                "MNIST-5k + EfficientNet-Lite0 features (embedded, not CLIP)")
        return [plots.pseudo_label_distribution(result.distribution, note=note),
                plots.confidence_histograms(result.confidences.assign(method=s["algorithm"]), note=note),
                plots.reliability_diagram(result.test, note=note)]

    def widget(self, initial_result: Exploration | None = None, **initial):
        """ipywidgets UI: on every change, retrain from the feature cache and redraw the three figures (the
        figures of ``initial_result`` are shown until the first change)."""
        import ipywidgets as w
        import matplotlib.pyplot as plt
        from IPython.display import display

        from .algorithms import REGISTRY

        v = {"algorithm": "finessl", "labels_per_class": 4, "zeta": 0.7, "smoothing": 0.5, "alpha_base": 8.0,
             "gamma": 3.0, **(initial_result.settings if initial_result else {}), **initial}
        controls = {
            "algorithm": w.Dropdown(options=sorted(REGISTRY), value=v["algorithm"], description="algorithm"),
            "labels_per_class": w.SelectionSlider(options=[1, 2, 4, 8, 16, 32], value=v["labels_per_class"],
                                                  description="labels/class"),
            "zeta": w.FloatSlider(value=v["zeta"], min=0.3, max=0.99, step=0.05, description="zeta"),
            "smoothing": w.FloatSlider(value=v["smoothing"], min=0.0, max=0.9, step=0.1, description="lambda"),
            "alpha_base": w.FloatSlider(value=v["alpha_base"], min=0.0, max=16.0, step=1.0, description="alpha_base"),
            "gamma": w.FloatSlider(value=v["gamma"], min=0.0, max=6.0, step=0.5, description="gamma"),
        }
        out, status = w.Output(), w.Label()

        def redraw(*_):
            values = {k: c.value for k, c in controls.items()}
            with out:
                out.clear_output(wait=True)
                t0 = time.perf_counter()
                result = self.run(values.pop("algorithm"), values.pop("labels_per_class"), **values)
                for fig in self.figures(result):
                    display(fig)
                    plt.close(fig)
                status.value = (f"retrained in {result.seconds:.2f} s, redrawn in {time.perf_counter() - t0:.2f} s; "
                                f"test top-1 {result.summary['test_top1']:.1f}%")

        for c in controls.values():
            c.observe(redraw, names="value")
        ui = w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), status, out])
        if initial_result is None:
            redraw()
        else:
            with out:
                for fig in self.figures(initial_result):
                    display(fig)
                    plt.close(fig)
        return ui
