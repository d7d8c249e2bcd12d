"""The SSL algorithm base class: a FixMatch-shaped template whose parts are swappable hooks.

One training step, given features already computed by the trainer (one backbone forward for all views):

    probs_w   = softmax(main(u.weak))                  (no grad, fp32)
    observe(index, probs_w)                            stateful trackers (class pace, priors, ...)
    pl, mask  = pseudo_label(probs_w), mask(probs_w)
    weight    = weight(probs_w, probs_aux, mask)
    loss      = supervised_loss(x) + unlabeled_loss(u, pl, mask, weight)
    after_losses(index, probs_w)                       state updates that must not affect this step's losses

An algorithm subclass overrides only what differs. Algorithms know nothing about files, devices or logging;
their state (``state_dict``) is saved and restored with every checkpoint.

No host-device sync inside a step: logs are detached 0-d tensors (the trainer sums them on the device and reads
them once per epoch), masks are multiplied in rather than used as boolean indices, and no Python ``if`` looks at a
tensor's value (tests/test_host_syncs.py counts them). The cosine heads normalise their weights once per step
(``normalised_once``) however often the step calls them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import check_choice
from ..models.heads import normalised_once

if TYPE_CHECKING:  # pragma: no cover
    from ..config import AlgorithmConfig

REGISTRY: dict[str, type["Algorithm"]] = {}


def register(cls: type["Algorithm"]) -> type["Algorithm"]:
    """Class decorator: make an algorithm available by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def build_algorithm(cfg: "AlgorithmConfig", num_classes: int, num_unlabeled: int, device=None) -> "Algorithm":
    check_choice("algorithm", cfg.name, sorted(REGISTRY))
    return REGISTRY[cfg.name](cfg, num_classes, num_unlabeled, device)


@dataclass
class Heads:
    main: nn.Module
    aux: nn.Module


@dataclass
class UnlabeledViews:
    """Backbone features of one unlabeled batch: the weak view and the strong views."""
    weak: Tensor
    strong: list[Tensor]


@dataclass
class StepOutput:
    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)  # 0-d tensors on the device: read with float()
    probs_main: Tensor | None = None   # [U, C] weak-view probabilities of the main head
    probs_aux: Tensor | None = None    # [U, C] weak-view probabilities of the aux head (if any)
    pseudo_label: Tensor | None = None
    mask: Tensor | None = None
    weight: Tensor | None = None


@dataclass
class RoundContext:
    """What the trainer offers :meth:`Algorithm.on_round_start` (both lazy: nothing runs unless called).

    predict_unlabeled()  main-head probabilities [N_u, C] (fp32, CPU) of the whole unlabeled set, clean view,
                         in unlabeled-index order (``u_index`` of the batches)
    reset_parameters()   trainable parameters back to their values at the start of training, optimiser
                         momentum cleared (only for algorithms whose ``needs_initial_state`` is true)"""
    predict_unlabeled: Callable[[], Tensor]
    reset_parameters: Callable[[], None]


def fp32(t: Tensor) -> Tensor:
    """``t.float()`` without the call when ``t`` is fp32 already (the head-level step's common case)."""
    return t if t.dtype == torch.float32 else t.float()


def probs(logits: Tensor) -> Tensor:
    """Softmax in fp32, detached."""
    return torch.softmax(fp32(logits.detach() if logits.requires_grad else logits), dim=1)


class Algorithm:
    """Base = FixMatch's structure: hard pseudo-labels, fixed-threshold mask, masked CE on strong view 1."""

    name: ClassVar[str] = "base"
    uses_unlabeled: ClassVar[bool] = True
    num_strong: ClassVar[int] = 1  # strong views the algorithm reads (the data pipeline always offers 2)
    # stacked training (finessl_lab/stacked.py): the attributes (dotted paths) holding the algorithm's tensor state,
    # or None if the algorithm cannot be trained stacked with torch.func.vmap
    stack_state: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg: "AlgorithmConfig", num_classes: int, num_unlabeled: int, device=None):
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_unlabeled = num_unlabeled
        self.device = device

    # -- hooks ------------------------------------------------------------------------------------------
    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        """See the weak-view predictions of unlabeled samples ``index`` before the losses are formed."""

    def pseudo_label(self, probs_w: Tensor) -> Tensor:
        return self.weak_top(probs_w).indices  # = probs_w.argmax(dim=1) (the first maximum, as argmax)

    def mask(self, probs_w: Tensor) -> Tensor:
        return (self.weak_top(probs_w).values >= self.cfg.threshold).float()

    _top_memo: tuple | None = None  # (probs_w, its version, probs_w.max(dim=1)) within a step

    def weak_top(self, probs_w: Tensor):
        """``probs_w.max(dim=1)`` (confidence, label), computed once per step for the hooks that read it."""
        top = self._top_memo
        if top is None or top[0] is not probs_w or top[1] != probs_w._version:
            top = self._top_memo = (probs_w, probs_w._version, probs_w.max(dim=1))
        return top[2]

    def aux_probs(self, heads: Heads, u: UnlabeledViews) -> Tensor | None:
        return None

    def weight(self, probs_w: Tensor, probs_aux: Tensor | None, mask: Tensor) -> Tensor:
        return mask

    def supervised_loss(self, heads: Heads, fx: Tensor, y: Tensor, logs: dict) -> Tensor:
        loss = F.cross_entropy(fp32(heads.main(fx)), y)
        logs["loss_x"] = loss.detach()
        return loss

    def unlabeled_loss(self, heads: Heads, u: UnlabeledViews, pl: Tensor, mask: Tensor, weight: Tensor,
                       logs: dict) -> Tensor:
        per_sample = F.cross_entropy(fp32(heads.main(u.strong[0])), pl, reduction="none")
        loss = (per_sample * weight).mean()
        if self.cfg.unlabeled_weight != 1.0:  # (x * 1.0 is x: the same loss and gradients without the op)
            loss = self.cfg.unlabeled_weight * loss
        logs["loss_u"] = loss.detach()
        return loss

    def after_losses(self, index: Tensor, probs_w: Tensor) -> None:
        """See the weak-view predictions again once this step's losses are formed (e.g. the official FineSSL
        writes its pace slots only here, so a batch's margins come from the pace before it)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before the first step of every epoch (also after a resume)."""

    def eval_logits(self, heads: Heads, features: Tensor) -> Tensor:
        """Logits of the evaluation / whole-unlabeled-set predictions: the main head unless an algorithm fuses
        heads (ULFine)."""
        return heads.main(features)

    needs_initial_state: ClassVar[bool] = False  # true: each round starts from the initial parameters (Experiment.reset_model)

    def on_round_start(self, epoch: int, ctx: RoundContext) -> None:
        """Called by the trainer right after :meth:`on_epoch_start`; for algorithms that pseudo-label the whole
        unlabeled set between rounds (FPL, IFPL, GRIP). No-op by default."""

    # -- the step ---------------------------------------------------------------------------------------
    def step(self, heads: Heads, fx: Tensor, y: Tensor, u: UnlabeledViews | None = None,
             u_index: Tensor | None = None) -> StepOutput:
        with normalised_once(heads.main, heads.aux):
            return self._step(heads, fx, y, u, u_index)

    def _step(self, heads: Heads, fx: Tensor, y: Tensor, u: UnlabeledViews | None, u_index: Tensor | None):
        logs: dict[str, Tensor] = {}
        if not self.uses_unlabeled or u is None:
            loss = self.supervised_loss(heads, fx, y, logs)
            return StepOutput(loss, logs)
        with torch.no_grad():
            probs_w = probs(heads.main(u.weak))
            probs_aux = self.aux_probs(heads, u)
        self.observe(u_index, probs_w)
        pl, mask = self.pseudo_label(probs_w), self.mask(probs_w)
        weight = self.weight(probs_w, probs_aux, mask)
        loss = self.supervised_loss(heads, fx, y, logs) + self.unlabeled_loss(heads, u, pl, mask, weight, logs)
        self.after_losses(u_index, probs_w)
        self._top_memo = None  # (holds this step's probabilities)
        logs["mask_ratio"] = mask.mean()
        logs["weight_mean"] = logs["mask_ratio"] if weight is mask else weight.mean()
        return StepOutput(loss, logs, probs_w, probs_aux, pl, mask, weight)

    # -- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state but the checkpoint holds {sorted(state)}")
