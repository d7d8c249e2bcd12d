"""The trainer's hook API: diagnostics receive one typed record per step and keep their own state.

A hook's ``state_dict()`` is saved in every checkpoint and handed back to ``load_state_dict()`` on resume, so
running statistics survive interruption. ``on_epoch_end`` may return extra columns for metrics.csv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class StepRecord:
    """What a hook sees after every optimiser step (tensors may live on the training device; unlabeled fields are
    None for algorithms that use no unlabeled data).

    Fields: ``step`` (0-based step just taken), ``epoch`` (0-based), ``logs`` (the step's scalar losses and
    statistics, e.g. loss_x, loss_u, mask_ratio, as 0-d tensors on the device: ``float(v)`` reads one, which waits
    for the device, so a hook that wants speed sums them on the device and reads once per epoch), ``u_index`` [U] (position of each unlabeled sample in the
    unlabeled set, the ``index`` of ``Run.predict('unlabeled')``), ``probs_main`` / ``probs_aux`` [U, C]
    (fp32 weak-view probabilities of the main / aux head; aux None without an aux head), ``pseudo_label`` [U],
    ``mask`` [U] (0/1), ``weight`` [U] (the loss weight actually used), ``y_true`` [U] and ``is_ood`` [U]
    (for analysis only: never used for training)."""
    step: int
    epoch: int
    logs: dict[str, Tensor | float]
    u_index: Tensor | None = None       # [U] position in the unlabeled set
    probs_main: Tensor | None = None    # [U, C] weak-view probabilities, main head (fp32)
    probs_aux: Tensor | None = None     # [U, C] weak-view probabilities, aux head (FineSSL) or None
    pseudo_label: Tensor | None = None  # [U]
    mask: Tensor | None = None          # [U] 0/1
    weight: Tensor | None = None        # [U] loss weight actually used
    y_true: Tensor | None = None        # [U] analysis only: never used for training
    is_ood: Tensor | None = None        # [U] analysis only


class Hook:
    """Base class of training hooks: subclass it, give it a unique ``name`` and override what you need.

    The trainer calls ``on_train_start`` once (also after a resume), ``on_step`` after every optimiser step,
    ``on_epoch_end`` after each epoch's evaluation (return a dict to add columns to metrics.csv) and
    ``on_train_end`` after the last step. An exception stops training with a
    :class:`~finessl_lab.trainer.HookError` naming the hook and the step."""

    name: str = "hook"

    def on_train_start(self, trainer) -> None:
        """Before the first step (``trainer.step`` > 0 after a resume); ``trainer.out`` is the run directory."""

    def on_step(self, record: StepRecord) -> None:
        """After every optimiser step (steps skipped by run.nan_policy=skip are not reported)."""

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        """After the epoch's evaluation; ``row`` is its metrics.csv row so far. Return extra columns or None."""
        return None

    def on_train_end(self, trainer) -> None:
        """After the last step, once metrics.csv and summary.json are written."""

    def state_dict(self) -> dict:
        """The hook's state, saved in every checkpoint (tensors, numbers, lists, dicts, numpy arrays)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state given by :meth:`state_dict` when a run resumes."""


class DeferredSteps:
    """What per-step hooks keep of the steps' records (references on their device, not copies: hooks must not
    modify a record's tensors in place) until they process them together: one cat and a few ops per batch of
    steps instead of a few small ops every step. :meth:`add` says when ``max_steps`` steps or ``max_elements``
    tensor elements are kept."""

    def __init__(self, max_steps: int = 64, max_elements: int | None = None):
        self.max_steps, self.max_elements = int(max_steps), max_elements
        self.items: list[tuple] = []
        self.elements = 0

    def add(self, item: tuple, elements: int = 0) -> bool:
        """Keep ``item``; True when it is time to process what is kept."""
        self.items.append(item)
        self.elements += elements
        return len(self.items) >= self.max_steps or (self.max_elements is not None
                                                     and self.elements >= self.max_elements)

    def take(self) -> list[tuple]:
        """What is kept (then nothing is)."""
        items, self.items, self.elements = self.items, [], 0
        return items


@dataclass
class PseudoLabelMonitor(Hook):
    """Per-epoch pseudo-label quality: accuracy over all and over masked samples, mask ratio, and the
    normalised entropy of the class distribution of masked pseudo-labels (1 = perfectly balanced).

    The counts are summed on the training device and read once per epoch: ``on_step`` never syncs the host and
    launches no op either. It keeps the step's ``pseudo_label``, ``mask``, ``y_true`` and ``is_ood`` (references,
    not copies: hooks must not modify a record's tensors in place) and counts every ``count_every`` steps, and
    whenever it is read, in one batch: each row falls in one of four cells per pseudo-label class (masked or not x
    correct or not), and one ``index_add_`` counts the rows per cell into a [4 C] table (~10 small ops per batch of
    steps instead of ~6 per step, which cost ~40 us a step on a 2-core CPU). ``counts`` (masked pseudo-labels per
    class) and the integer fields are brought up to date when they are read (``on_epoch_end``, ``state_dict``)."""
    num_classes: int
    name: str = "pseudo_labels"
    counts: Tensor = field(init=False)
    seen: int = 0
    correct: int = 0
    masked: int = 0
    masked_correct: int = 0
    count_every: int = 64  # steps kept before they are counted (memory: ~(17 + 4 C / U) bytes per row kept)

    def __post_init__(self):
        self.counts = torch.zeros(self.num_classes, dtype=torch.long)
        self._steps = DeferredSteps(self.count_every)  # (pseudo_label, mask, y_true, is_ood) not counted yet
        # on the device: rows per cell pl + C * masked + 2 C * correct, this epoch so far
        self._table: Tensor | None = None

    def on_step(self, r: StepRecord) -> None:
        pl = r.pseudo_label
        if pl is None:
            return
        self.seen += pl.shape[0]
        if self._steps.add((pl, r.mask, r.y_true, r.is_ood)):
            self._count()

    def _count(self) -> None:
        """Count the kept steps' rows into the device table (no host sync)."""
        steps = self._steps.take()
        if not steps:
            return
        dev = steps[0][0].device

        def joined(i: int) -> Tensor:
            parts = [s[i].to(dev) for s in steps]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        pl, m, y = joined(0), joined(1), joined(2)
        if m.dtype != torch.bool:
            m = m > 0
        ok = pl == y
        if any(s[3] is not None for s in steps):
            ood = [s[3].to(dev) if s[3] is not None else torch.zeros(s[0].shape[0], dtype=torch.bool, device=dev)
                   for s in steps]
            ok = ok > (ood[0] if len(ood) == 1 else torch.cat(ood))  # correct and in-distribution (bools)
        c = self.num_classes
        cell = torch.add(pl, m, alpha=c).add_(ok, alpha=2 * c)
        table = self._table
        if table is None or table.device != dev:
            self._fold_table()
            table = self._table = torch.zeros(4 * c, dtype=torch.long, device=dev)
        table.index_add_(0, cell, torch.ones_like(cell))

    def _fold(self) -> None:
        """Count the kept steps and move the device table into ``counts`` and the integer fields (one host read)."""
        self._count()
        self._fold_table()

    def _fold_table(self) -> None:
        t = self._table
        if t is not None:
            self._table = None
            t = t.view(4, self.num_classes)  # [not masked, masked, correct & not masked, correct & masked]
            masked = t[1] + t[3]
            m, c, mc = torch.stack([masked.sum(), t[2:].sum(), t[3].sum()]).tolist()
            self.correct, self.masked, self.masked_correct = self.correct + c, self.masked + m, self.masked_correct + mc
            self.counts = self.counts.to(t.device) + masked

    def on_epoch_end(self, epoch: int, row: dict) -> dict | None:
        self._fold()
        if not self.seen:
            return None
        out = {"pl_acc": 100.0 * self.correct / self.seen,
               "pl_acc_masked": 100.0 * self.masked_correct / self.masked if self.masked else math.nan,
               "pl_mask_ratio": self.masked / self.seen,
               "pl_entropy": class_entropy(self.counts.cpu())}
        self.load_state_dict({})
        return out

    def state_dict(self) -> dict:
        self._fold()
        return {"counts": self.counts.cpu().clone(), "seen": self.seen, "correct": self.correct,
                "masked": self.masked, "masked_correct": self.masked_correct}

    def load_state_dict(self, state: dict) -> None:
        self._table, self._steps = None, DeferredSteps(self.count_every)
        self.counts = state.get("counts", torch.zeros(self.num_classes, dtype=torch.long)).clone()
        for k in ("seen", "correct", "masked", "masked_correct"):
            setattr(self, k, state.get(k, 0))


def class_entropy(counts: Tensor) -> float:
    """Entropy of a class histogram divided by log(C): 1 = uniform, 0 = one class (nan if empty)."""
    total = counts.sum()
    if total == 0:
        return math.nan
    p = counts.double() / total
    p = p[p > 0]
    return float(-(p * p.log()).sum() / math.log(len(counts)))
