"""Load a finished run and look inside it: ``run = finessl_lab.load_run("runs/x")``.

A :class:`Run` holds the config, the metrics and summary, the recorded tables (``run.records(name)``) and, built
lazily on first use, the run's experiment (data, split and feature cache reused from the cache directory,
never retrained) with the trained heads and PEFT weights restored from checkpoint.pt. ``run.predict(...)``
gives one row per sample of any split for either head.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import io
from .config import Config
from .errors import UserError, check_choice
from .rundir import CHECKPOINT, CONFIG, METRICS, SUMMARY

SPLITS = ("test", "val", "unlabeled", "labeled")
HEADS = ("main", "aux")
VIEWS = ("clean", "weak")


def _where(run_dir: Path) -> str:
    return repr(str(run_dir))


def load_run(run_dir: str | Path, device: str | None = None) -> "Run":
    """Open the finished run in ``run_dir`` (config.yaml, summary.json, metrics.csv, checkpoint.pt).

    ``device`` overrides ``run.device`` for predictions (e.g. 'cpu' to inspect a GPU run on a laptop). A run
    that is unfinished, corrupted, or written by an incompatible version is a one-line UserError."""
    from .trainer import CHECKPOINT_FORMAT

    if isinstance(run_dir, Run):
        return run_dir
    if not isinstance(run_dir, (str, Path)) or not str(run_dir).strip():
        raise UserError(f"run_dir={run_dir!r} is not valid; valid: the directory of a run written by finessl-lab train")
    d = Path(run_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"run directory {_where(d)} does not exist; valid: a directory written by finessl-lab train")
    if not (d / CONFIG).is_file():
        raise UserError(f"{_where(d)} holds no config.yaml: it is not a finessl-lab run directory")
    try:
        cfg = Config.from_yaml(d / CONFIG)
    except UserError as e:
        raise UserError(f"run {_where(d)} has a config this version of finessl-lab cannot read ({e}); was it written "
                        "by another version?") from None
    if not (d / SUMMARY).is_file():
        hint = (f"; continue it with: finessl-lab train --resume {d}" if (d / CHECKPOINT).is_file()
                else " and no checkpoint; start it again")
        raise UserError(f"run {_where(d)} is unfinished (no summary.json){hint}")
    try:
        summary = json.loads((d / SUMMARY).read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"run {_where(d)} has a corrupted summary.json ({e}); run it again") from None
    ckpt = io.load_checkpoint(d / CHECKPOINT)  # missing / truncated / corrupted -> UserError
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"checkpoint of run {_where(d)} has format {fmt!r}; this finessl-lab reads format "
                        f"{CHECKPOINT_FORMAT}: was it written by another version?")
    if ckpt.get("step") != cfg.total_steps:
        raise UserError(f"run {_where(d)} is unfinished: its checkpoint is at step {ckpt.get('step')} of "
                        f"{cfg.total_steps}; continue it with: finessl-lab train --resume {d}")
    stored = Config.from_dict(ckpt["config"])
    if stored.to_dict() != cfg.to_dict():
        raise UserError(f"run {_where(d)}: config.yaml does not match the config in checkpoint.pt; the directory was "
                        "edited or mixes two runs")
    return Run(d, cfg, summary, ckpt, device)


class Run:
    """A finished run: ``config``, ``summary`` (dict), ``metrics`` (DataFrame, one row per epoch), recorded tables
    (:meth:`records`), and lazily the ``experiment`` and trained ``model``; :meth:`predict` / :meth:`predict_proba`."""

    def __init__(self, run_dir: Path, config: Config, summary: dict, checkpoint: dict, device: str | None = None):
        self.dir = Path(run_dir)
        #: the run's config (from config.yaml)
        self.config = config
        #: summary.json as a dict
        self.summary = summary
        self._ckpt = checkpoint
        self._device = device
        self._cache: dict = {}

    def __repr__(self) -> str:
        s = self.summary
        return (f"Run({str(self.dir)!r}: {s.get('algorithm')} seed {s.get('seed')}, {s.get('dataset')} "
                f"N={s.get('labels_per_class')}, {s.get('backbone')}, test top-1 {s.get('test_top1')})")

    # -- what is on disk ---------------------------------------------------------------------------------------
    @cached_property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv: one row per epoch (loss, lr, test_top1, pl_acc, pl_entropy (normalised), ...)."""
        return pd.read_csv(self.dir / METRICS)

    @property
    def label(self) -> str:
        """The algorithm name (used as the 'method' in tidy frames)."""
        return self.config.algorithm.name

    @property
    def note(self) -> str:
        """A footnote naming backbone, weights and dataset, for figures."""
        return figure_note(self.config)

    def records(self, name: str) -> pd.DataFrame:
        """A recorded table: 'samples', 'class_distribution', 'epoch_metrics' or 'class_accuracy' (see
        :mod:`finessl_lab.diagnostics.recorders`); the run must have been trained with run.record=true."""
        from .diagnostics.recorders import RECORDS_DIR, TABLES, load_table

        check_choice("record table", name, TABLES)
        if not self.config.run.record:
            raise UserError(f"run {_where(self.dir)} was trained with run.record=false, so it has no {name!r} table; "
                            "valid: train with --set run.record=true (Python: cfg.run.record = True)")
        frame = load_table(self.dir / RECORDS_DIR, name)
        if frame is None:
            raise UserError(f"run {_where(self.dir)} has no records/{name} table (deleted?); run it again")
        return frame

    # -- the model ----------------------------------------------------------------------------------------------
    @cached_property
    def experiment(self):
        """The run's Experiment (data, split, feature cache, model) built from its config, trained weights loaded.
        Nothing is retrained; a missing feature cache is recomputed once (deterministically)."""
        from .algorithms import REGISTRY
        from .build import build_experiment

        cfg = Config.from_dict(self.config.to_dict())
        if self._device is not None:
            cfg.run.device = self._device
        cfg.run.progress = False
        exp = build_experiment(cfg, uses_unlabeled=REGISTRY[cfg.algorithm.name].uses_unlabeled, progress=False)
        exp.model.load_trainable_state_dict(self._ckpt["model"])
        exp.model.eval()
        return exp

    @property
    def model(self):
        """The trained SSLModel (backbone + PEFT + main and aux heads), in eval mode."""
        return self.experiment.model

    @cached_property
    def has_aux(self) -> bool:
        """Whether the algorithm trains the aux head (FineSSL with DLS); otherwise the aux head is untrained."""
        from .algorithms import build_algorithm

        return bool(getattr(build_algorithm(self.config.algorithm, 2, 1), "uses_aux", False))

    def _indices(self, split: str) -> np.ndarray | None:
        s = self.experiment.split
        return {"labeled": s.labeled, "unlabeled": s.unlabeled, "val": s.val}.get(split)

    def _inputs(self, split: str, view: str):
        """(inputs for trainer.predict: a feature tensor or an image DataLoader, train indices or None)."""
        from .build import EvalSet
        from .data.features import WEAK_STREAM, ImageViews, ignore_stop_signals

        e, cfg = self.experiment, self.config
        idx = self._indices(split)
        if split == "val" and not len(idx):
            raise UserError(f"run {_where(self.dir)} has no validation split (data.val_per_class=0); valid splits: "
                            "test, unlabeled, labeled")
        if split == "test" and view == "weak":
            raise UserError("view='weak' exists for training images only (test images are evaluated clean); valid: "
                            "split='test' with view='clean'")
        if e.features is not None:
            if split == "test":
                x = e.features["test"]
            else:
                bank = e.features["train_clean"] if view == "clean" else e.features["weak"][0]
                x = bank[torch.as_tensor(idx)]
            return x.float().to(e.device), idx
        ds = e.bundle.test if split == "test" else e.bundle.train
        if view == "clean":
            views = ImageViews(ds.images, e.transforms.test, stream=None, seed=0)
        else:  # the first cached weak view of feature-cache mode, image for image
            views = ImageViews(ds.images, e.transforms.weak, stream=WEAK_STREAM, seed=cfg.run.view_seed)
        if idx is not None:
            views = torch.utils.data.Subset(views, idx.tolist())
        from .data.loading import worker_plan

        workers = worker_plan(cfg.data.num_workers).workers  # within the cores
        loader = torch.utils.data.DataLoader(views, batch_size=cfg.run.eval_batch_size, num_workers=workers,
                                             worker_init_fn=ignore_stop_signals if workers else None)
        return loader, idx

    def predict_proba(self, split: str = "test", head: str = "main", view: str = "clean") -> np.ndarray:
        """Softmax probabilities [N, C] (float32) of ``head`` on ``split`` in ``view`` (rows in split order)."""
        from .build import EvalSet
        from .trainer import predict_features

        check_choice("split", split, SPLITS)
        check_choice("head", head, HEADS)
        check_choice("view", view, VIEWS)
        if head == "aux" and not self.has_aux:
            raise UserError(f"algorithm {self.config.algorithm.name!r} trains no aux head (its aux head is an untrained "
                            "copy of the initial main head); valid: head='main', or a FineSSL run with dls=true")
        key = (split, head, view)
        if key not in self._cache:  # one backbone pass gives both heads
            e = self.experiment
            inputs, _ = self._inputs(split, view)
            heads = ("main", "aux") if self.has_aux else ("main",)
            logits = predict_features(e.model, EvalSet(inputs, torch.zeros(0)), e.device, e.precision,
                                      self.config.run.eval_batch_size, heads=heads)
            for h in heads:
                self._cache[(split, h, view)] = torch.softmax(logits[h].float(), dim=1).numpy()
        return self._cache[key]

    def predict(self, split: str = "test", head: str = "main", view: str = "clean") -> pd.DataFrame:
        """One row per sample of ``split`` ('test', 'val', 'unlabeled', 'labeled'): ``index`` (position in the
        split; for 'unlabeled' the same index as the recorders' and StepRecord's), ``dataset_index`` (index in the
        dataset's train or test set), ``y_true``, ``is_ood``, ``pred``, ``confidence`` (max probability),
        ``correct`` and ``probs`` (the probability vector as an array; :meth:`predict_proba` gives [N, C]).
        ``head`` = 'main' or 'aux'; ``view`` = 'clean' (test transform) or 'weak' (the first cached weak view
        of each training image; training splits only)."""
        p = self.predict_proba(split, head, view)
        e = self.experiment
        idx = self._indices(split)
        if split == "test":
            y = np.asarray(e.bundle.test.targets, dtype=np.int64)
            sample, ood = np.arange(len(y)), np.zeros(len(y), dtype=bool)
        else:
            y = np.asarray(e.split_view.targets, dtype=np.int64)[idx]
            sample, ood = idx, np.asarray(e.split_view.ood, dtype=bool)[idx]
        pred = p.argmax(1)
        frame = pd.DataFrame({"index": np.arange(len(y)), "dataset_index": sample, "y_true": y, "is_ood": ood,
                              "pred": pred, "confidence": p.max(1), "correct": (pred == y) & ~ood, "probs": list(p)})
        frame.attrs["note"] = self.note  # figures' default footnote
        return frame


def figure_note(cfg: Config) -> str:
    """'<backbone> (<weights>), <dataset> N=<labels>/class[, note]' for figure footnotes; embedded runs say that
    they are not CLIP."""
    m, d = cfg.model, cfg.data
    weights = m.pretrained
    note = f"{m.backbone} ({weights} weights, {m.peft}), {d.dataset} N={d.labels_per_class}/class"
    if weights == "embedded" or not m.backbone.lower().startswith(("vit", "rn", "convnext")):
        note += " - embedded/offline model, not CLIP: not the paper's numbers"
    return note


def as_runs(runs_or_dirs) -> list[Run]:
    """Runs from Run objects or run directories (a directory of runs, e.g. a compare --out, is searched)."""
    if isinstance(runs_or_dirs, (str, Path, Run)):
        runs_or_dirs = [runs_or_dirs]
    out: list[Run] = []
    for item in runs_or_dirs:
        if isinstance(item, Run):
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir() and not (p / CONFIG).is_file():
            found = sorted(q.parent for q in p.rglob(SUMMARY))
            if not found:
                raise UserError(f"{_where(p)} holds no finished run (no summary.json below it)")
            out.extend(load_run(q) for q in found)
        else:
            out.append(load_run(p))
    return out

