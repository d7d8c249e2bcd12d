"""Recorder hooks: the per-sample, per-class and per-epoch diagnostics of a run, kept as tidy tables.

Turn them on with ``run.record=true`` (CLI ``--set run.record=true``); the trainer then adds

* :class:`SampleRecorder` (``samples``): one row per unlabeled sample per step inside the recording window
  (every step of the last epoch by default; also of every k-th epoch with ``run.record_every=k``): step, epoch,
  index, y_true, is_ood, pseudo_label, correct, confidence_main, confidence_aux, pred_aux, mask, weight;
* :class:`ClassDistributionRecorder` (``class_distribution``): per epoch and class, how many pseudo-labels
  (all, and those kept by the mask) went to the class;
* :class:`EpochMetricsRecorder` (``epoch_metrics`` and ``class_accuracy``): per epoch, ECE and AUROC of the
  pseudo-labels' confidence (correct vs wrong, in-distribution vs OOD) for the main and aux heads, the test ECE
  of both heads (also added to metrics.csv), and per-class test accuracy and confidence.

Each recorder keeps its state through checkpoints (``state_dict``), writes its tables to ``<out>/records/`` at
the end of training (parquet if pyarrow is installed, else CSV), and exposes them as DataFrames
(``recorder.frames()``); ``finessl_lab.load_run(dir).records(name)`` reads them back.
``run.tensorboard=true`` adds :class:`TensorBoardLogger`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import io
from ..errors import UserError
from ..hooks import DeferredSteps, Hook, StepRecord
from . import metrics as M

RECORDS_DIR = "records"
TABLES = ("samples", "class_distribution", "epoch_metrics", "class_accuracy")
#: the per-step recorders keep the steps' own record tensors and process them together (hooks.DeferredSteps: one
#: cat and a few ops for up to this many steps or elements, instead of ~6 small ops every step; the same values)
DEFER_STEPS, DEFER_ELEMENTS = 64, 1 << 23


def _has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def save_table(directory: str | Path, name: str, frame: pd.DataFrame) -> Path:
    """Write ``frame`` atomically as ``<directory>/<name>.parquet`` (or ``.csv`` without pyarrow)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if _has_parquet():
        return io.atomic_write(directory / f"{name}.parquet", lambda f: frame.to_parquet(f, index=False), binary=True)
    return io.write_csv(directory / f"{name}.csv", frame)


def load_table(directory: str | Path, name: str) -> pd.DataFrame | None:
    """The table ``name`` written by :func:`save_table`, or None if there is none."""
    directory = Path(directory)
    if (directory / f"{name}.parquet").is_file():
        if not _has_parquet():
            raise UserError(f"{directory / name}.parquet needs pyarrow to be read; valid: pip install pyarrow")
        return pd.read_parquet(directory / f"{name}.parquet")
    if (directory / f"{name}.csv").is_file():
        return pd.read_csv(directory / f"{name}.csv")
    return None


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _max_conf(p) -> tuple[torch.Tensor, torch.Tensor]:
    v, i = p.max(dim=1)
    return v.detach().cpu(), i.detach().cpu()


class _Recorder(Hook):
    """Common part: remember where the run directory is; write this recorder's tables at the end."""

    def on_train_start(self, trainer) -> None:
        self._trainer = trainer
        out = getattr(trainer, "out", None)
        if out is not None and trainer.step == 0:  # a fresh run: tables of a replaced run must not survive
            for name in self.frames():
                for ext in ("parquet", "csv"):
                    (Path(out) / RECORDS_DIR / f"{name}.{ext}").unlink(missing_ok=True)

    def frames(self) -> dict[str, pd.DataFrame]:  # pragma: no cover - overridden
        return {}

    def on_train_end(self, trainer) -> None:
        if getattr(trainer, "out", None) is None:
            return
        for name, frame in self.frames().items():
            save_table(Path(trainer.out) / RECORDS_DIR, name, frame)


class SampleRecorder(_Recorder):
    """Per-sample unlabeled records of every step inside the window (see the module docstring).

    ``every`` = 0 records every step of the last epoch only; ``every`` = k also every step of epochs k-1, 2k-1,
    ... (every k-th epoch, counted from 1). ``confidence_aux`` / ``pred_aux`` are NaN / -1 for algorithms without
    an aux head. ``weight`` is the loss weight actually used (FineSSL: psi; FixMatch: the 0/1 mask)."""

    name = "record_samples"
    COLUMNS = ("step", "epoch", "index", "y_true", "is_ood", "pseudo_label", "confidence_main", "confidence_aux",
               "pred_aux", "mask", "weight")

    def __init__(self, every: int = 0):
        self.every = int(every)
        self.last_epoch: int | None = None
        self.chunks: list[dict[str, np.ndarray]] = []
        self._pending = []

    def on_train_start(self, trainer) -> None:
        super().on_train_start(trainer)
        cfg = trainer.cfg
        self.last_epoch = (cfg.total_steps - 1) // cfg.run.steps_per_epoch

    def in_window(self, epoch: int) -> bool:
        """Whether every step of ``epoch`` is recorded."""
        return epoch == self.last_epoch or (self.every > 0 and (epoch + 1) % self.every == 0)

    def on_step(self, r: StepRecord) -> None:
        if r.pseudo_label is None or not self.in_window(r.epoch):
            return
        # kept on the device (no host sync per step); moved to numpy once per epoch (_flush)
        self._pending.append((r.step, r.epoch, r.u_index, r.y_true, r.is_ood, r.pseudo_label, r.probs_main.detach(),
                              None if r.probs_aux is None else r.probs_aux.detach(), r.mask, r.weight))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for step, epoch, index, y_true, is_ood, pl, probs_main, probs_aux, mask, weight in pending:
            n = len(pl)
            conf, _ = _max_conf(probs_main)
            if probs_aux is not None:
                conf_aux, pred_aux = _max_conf(probs_aux)
                conf_aux, pred_aux = conf_aux.numpy(), pred_aux.numpy()
            else:
                conf_aux, pred_aux = np.full(n, np.nan, np.float32), np.full(n, -1, np.int64)
            self.chunks.append({
                "step": np.full(n, step, np.int64), "epoch": np.full(n, epoch, np.int64), "index": _np(index),
                "y_true": _np(y_true), "is_ood": _np(is_ood) if is_ood is not None else np.zeros(n, bool),
                "pseudo_label": _np(pl), "confidence_main": conf.numpy(), "confidence_aux": conf_aux,
                "pred_aux": pred_aux, "mask": _np(mask).astype(bool), "weight": _np(weight).astype(np.float32)})

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        self._flush()
        return None

    def frame(self) -> pd.DataFrame:
        """The records as one DataFrame (columns in :attr:`COLUMNS` plus ``correct``)."""
        self._flush()
        if not self.chunks:
            f = pd.DataFrame({c: pd.Series(dtype=float) for c in self.COLUMNS})
        else:
            f = pd.DataFrame({c: np.concatenate([ch[c] for ch in self.chunks]) for c in self.COLUMNS})
        f.insert(6, "correct", (f["pseudo_label"] == f["y_true"]) & ~f["is_ood"].astype(bool))
        return f

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"samples": self.frame()}

    def state_dict(self) -> dict:
        self._flush()
        if not self.chunks:
            return {"columns": {}}
        merged = {c: np.concatenate([ch[c] for ch in self.chunks]) for c in self.COLUMNS}
        self.chunks = [merged]  # keep the list short
        return {"columns": merged}

    def load_state_dict(self, state: dict) -> None:
        cols = state.get("columns") or {}
        self.chunks = [dict(cols)] if cols else []
        self._pending = []


class ClassDistributionRecorder(_Recorder):
    """Per epoch and class: ``count`` (pseudo-labels of that class), ``masked_count`` (of those, kept by the mask,
    i.e. confident), ``fraction`` and ``masked_fraction`` (of the epoch's total)."""

    name = "record_class_distribution"

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.counts = torch.zeros(self.num_classes, dtype=torch.long)
        self.masked = torch.zeros(self.num_classes, dtype=torch.long)
        self.rows: list[dict] = []
        self._steps = DeferredSteps(DEFER_STEPS, DEFER_ELEMENTS)

    def on_step(self, r: StepRecord) -> None:
        if r.pseudo_label is not None and self._steps.add((r.pseudo_label.detach(), r.mask.detach()),
                                                          r.pseudo_label.numel()):
            self._count()

    def _count(self) -> None:
        """Count the kept steps' pseudo-labels on their device (no host sync)."""
        items = self._steps.take()
        if not items:
            return
        pl = torch.cat([p for p, _ in items])
        mask = torch.cat([m for _, m in items])
        if self.counts.device != pl.device:
            self.counts, self.masked = self.counts.to(pl.device), self.masked.to(pl.device)
        self.counts.index_add_(0, pl, torch.ones_like(pl))
        self.masked.index_add_(0, pl, (mask > 0).long())

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        self._count()
        counts, masked = self.counts.tolist(), self.masked.tolist()  # one host read per epoch
        total, mtotal = sum(counts), sum(masked)
        if total:
            for c in range(self.num_classes):
                n, m = counts[c], masked[c]
                self.rows.append({"epoch": epoch, "class": c, "count": n, "masked_count": m,
                                  "fraction": n / total, "masked_fraction": m / mtotal if mtotal else math.nan})
        self.counts.zero_()
        self.masked.zero_()
        return None

    def frame(self) -> pd.DataFrame:
        cols = ["epoch", "class", "count", "masked_count", "fraction", "masked_fraction"]
        return pd.DataFrame(self.rows, columns=cols)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"class_distribution": self.frame()}

    def state_dict(self) -> dict:
        self._count()
        return {"counts": self.counts.cpu().clone(), "masked": self.masked.cpu().clone(), "rows": list(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.counts, self.masked = state["counts"].clone(), state["masked"].clone()
            self.rows = list(state["rows"])


class EpochMetricsRecorder(_Recorder):
    """Per epoch: calibration and confidence separation of the pseudo-labels (from the training steps) and of the
    test predictions (one extra evaluation per epoch).

    Columns of ``epoch_metrics`` (also added to metrics.csv): ``pl_ece_main``, ``pl_ece_aux`` (ECE of the
    weak-view confidence against pseudo-label correctness), ``pl_auroc_main``, ``pl_auroc_aux`` (AUROC of
    correct vs wrong pseudo-labels), ``pl_auroc_ood_main`` / ``pl_auroc_ood_aux`` (in-distribution vs OOD, NaN
    without OOD samples), ``pl_avg_conf_main``, ``test_ece_main``, ``test_ece_aux`` (aux: NaN when the algorithm
    trains no aux head), ``test_avg_conf_main``. ``class_accuracy``: epoch, head, class, count, accuracy (%),
    confidence (mean max-probability over the test samples of that class)."""

    name = "record_epoch_metrics"

    def __init__(self, num_classes: int, n_bins: int = 15):
        self.num_classes, self.n_bins = int(num_classes), int(n_bins)
        self._reset_epoch()
        self.rows: list[dict] = []
        self.class_rows: list[dict] = []

    def _reset_epoch(self) -> None:
        self.buf: dict[str, list] = {"main": [], "aux": [], "correct": [], "ood": []}
        self._steps = DeferredSteps(DEFER_STEPS, DEFER_ELEMENTS)

    def on_step(self, r: StepRecord) -> None:
        if r.pseudo_label is None:
            return
        # kept on the device (no host sync per step): the steps' tensors, reduced every DEFER_STEPS steps
        item = (r.pseudo_label.detach(), r.probs_main.detach(), None if r.probs_aux is None else r.probs_aux.detach(),
                r.y_true.detach(), None if r.is_ood is None else r.is_ood.detach())
        if self._steps.add(item, r.probs_main.numel() * (1 if r.probs_aux is None else 2)):
            self._reduce()

    def _reduce(self) -> None:
        """The kept steps' max confidences and pseudo-label correctness, appended to the epoch's buffer."""
        items = self._steps.take()
        if not items:
            return
        pl = torch.cat([it[0] for it in items])
        self.buf["main"].append(torch.cat([it[1] for it in items]).max(dim=1).values)
        if all(it[2] is not None for it in items):
            self.buf["aux"].append(torch.cat([it[2] for it in items]).max(dim=1).values)
        else:  # (a step without aux probabilities: per step, as each came)
            self.buf["aux"] += [it[2].max(dim=1).values for it in items if it[2] is not None]
        ood = torch.cat([it[4].bool() if it[4] is not None else torch.zeros(len(it[0]), dtype=torch.bool,
                                                                             device=it[0].device) for it in items])
        self.buf["correct"].append((pl == torch.cat([it[3] for it in items])) & ~ood)
        self.buf["ood"].append(ood)

    def _test_metrics(self, epoch: int) -> dict:
        from ..trainer import predict

        t = getattr(self, "_trainer", None)
        if t is None or "test" not in t.exp.eval_sets:
            return {}
        e, out = t.exp, {}
        s = e.eval_sets["test"]
        heads = ["main"] + (["aux"] if getattr(t.algorithm, "uses_aux", False) else [])
        for head in ("main", "aux"):
            if head not in heads:
                out[f"test_ece_{head}"] = math.nan
                continue
            logits = getattr(t, "eval_logits", {}).get("test") if head == "main" else None  # the trainer's own
            if logits is None:
                logits = predict(e.model, s, e.device, e.precision, t.cfg.run.eval_batch_size, head=head)
            p = torch.softmax(logits, 1)
            conf, pred = p.max(1)
            y = s.targets.cpu()
            out[f"test_ece_{head}"] = M.expected_calibration_error(conf, pred == y, self.n_bins)
            if head == "main":
                out["test_avg_conf_main"] = float(conf.mean())
            table = M.per_class_accuracy(y, pred, self.num_classes)
            conf_c = np.bincount(y.numpy(), weights=conf.numpy(), minlength=self.num_classes)
            with np.errstate(invalid="ignore", divide="ignore"):
                conf_c = conf_c / table["count"].to_numpy()
            for c in range(self.num_classes):
                self.class_rows.append({"epoch": epoch, "head": head, "class": c, "count": int(table["count"][c]),
                                        "accuracy": 100.0 * float(table["accuracy"][c]), "confidence": float(conf_c[c])})
        return out

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        out: dict = {}
        self._reduce()
        if self.buf["main"]:
            main, correct, ood = (torch.cat(self.buf[k]).cpu() for k in ("main", "correct", "ood"))
            aux = torch.cat(self.buf["aux"]).cpu() if self.buf["aux"] else None
            ind = ~ood
            for head, conf in (("main", main), ("aux", aux)):
                if conf is None:
                    out.update({f"pl_ece_{head}": math.nan, f"pl_auroc_{head}": math.nan, f"pl_auroc_ood_{head}": math.nan})
                    continue
                out[f"pl_ece_{head}"] = M.expected_calibration_error(conf[ind], correct[ind], self.n_bins)
                out[f"pl_auroc_{head}"] = M.separation_auroc(conf[ind], correct[ind])
                out[f"pl_auroc_ood_{head}"] = M.separation_auroc(conf, ind)
            out["pl_avg_conf_main"] = float(main.mean())
        self._reset_epoch()
        out.update(self._test_metrics(epoch))
        if out:
            self.rows.append({"epoch": epoch, **out})
        return out or None

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"epoch_metrics": pd.DataFrame(self.rows),
                "class_accuracy": pd.DataFrame(self.class_rows,
                                               columns=["epoch", "head", "class", "count", "accuracy", "confidence"])}

    def state_dict(self) -> dict:
        # the per-epoch buffer is empty at every epoch-end checkpoint; a mid-epoch checkpoint keeps it too
        self._reduce()
        return {"rows": list(self.rows), "class_rows": list(self.class_rows),
                "buf": {k: [torch.cat(v).cpu()] if v else [] for k, v in self.buf.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.rows, self.class_rows = list(state["rows"]), list(state["class_rows"])
            self.buf = {k: list(v) for k, v in state["buf"].items()}


class TensorBoardLogger(Hook):
    """Per-step scalars (loss and the algorithm's logs) and per-epoch metrics (every numeric metrics.csv column)
    as TensorBoard logs in ``<out>/tensorboard`` (``tensorboard --logdir <out>``)."""

    name = "tensorboard"

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError("run.tensorboard=true needs the tensorboard package, which is not installed; valid: "
                            "pip install tensorboard, or run.tensorboard=false") from None
        self.writer = None

    def on_train_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if trainer.out is None:
            raise UserError("run.tensorboard=true needs a run directory (out_dir) to write the logs to; valid: "
                            "pass out_dir, or run.tensorboard=false")
        self.writer = SummaryWriter(str(Path(trainer.out) / "tensorboard"), purge_step=trainer.step or None)

    def on_step(self, r: StepRecord) -> None:
        if self.writer is not None:
            for k, v in r.logs.items():
                self.writer.add_scalar(f"step/{k}", v, r.step + 1)

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"epoch/{k}", v, epoch)
            self.writer.flush()
        return None

    def on_train_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


def recorders_from_config(cfg, exp) -> list[Hook]:
    """The recorder hooks a config asks for (``run.record``, ``run.record_every``, ``run.tensorboard``)."""
    hooks: list[Hook] = []
    if getattr(cfg.run, "record", False):
        hooks += [SampleRecorder(cfg.run.record_every), ClassDistributionRecorder(exp.num_classes),
                  EpochMetricsRecorder(exp.num_classes)]
    if getattr(cfg.run, "tensorboard", False):
        hooks.append(TensorBoardLogger())
    return hooks
