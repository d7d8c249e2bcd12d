"""The CLIP pseudo-labelling strategies of the FineSSL paper's Table 12 (Menghini et al., NeurIPS 2023,
"Enhancing CLIP with CLIP: Exploring Pseudolabeling for Limited-Label Prompt Tuning"):

    FPL   few pseudo-labels: before training, the initial model labels the whole unlabeled set; the K (16) most
          confident samples per predicted class join the labeled set, fixed for all of training
    IFPL  iterative FPL: at the start of every round the CURRENT model re-labels the set, again top-K per class
    GRIP  grow and refine iteratively: round r keeps the top ceil((r+1) |U| / (C R)) per class (R rounds: the
          last round keeps up to |U| / C per class, the whole set if predictions are balanced) and
          re-initialises the trainable parameters each round

How it plugs into the trainer (the one extra hook these methods need): ``Algorithm.on_round_start(epoch, ctx)``
is called right after ``on_epoch_start``. ``ctx.predict_unlabeled()`` runs the main head over the clean view of
the whole unlabeled set (cached features or test-transform images) and ``ctx.reset_parameters()`` restores the
trainable parameters kept at the start of training (only kept when ``needs_initial_state``) and clears the SGD
momentum; the learning-rate schedule keeps running over the whole budget (the original restarts training per
round). A round is ``epochs_per_round`` epochs. The fixed pseudo-labels are part of the checkpoint.

Training on them: our batches draw labeled and unlabeled samples in separate streams, so a pseudo-labeled sample
is learned when the unlabeled stream visits it: Lu = mean over the SELECTED rows of the batch of
CE(main(view), fixed label), times ``algorithm.unlabeled_weight``, on the weak view (the original's augmentation
is a flip + crop). The selected-set size matches the original; the labeled : pseudo-labeled sampling ratio does not.
For the pseudo-label monitor, unselected samples report the current argmax with mask 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import opt
from .base import Algorithm, RoundContext, register


@dataclass
class FPLOptions:
    per_class: int = opt(16, lo=1, help="pseudo-labels kept per class (top-K by confidence)")
    view: str = opt("weak", choices=("weak", "strong"), help="view the pseudo-label loss reads")


@dataclass
class IFPLOptions(FPLOptions):
    epochs_per_round: int = opt(1, lo=1, help="epochs between two re-labellings")
    reinit_each_round: bool = opt(False, help="re-initialise trainable parameters at every new round")


@dataclass
class GRIPOptions:
    rounds: int = opt(10, lo=1, help="R: rounds over which the pseudo-labeled set grows to the whole set")
    epochs_per_round: int = opt(1, lo=1, help="epochs between two re-labellings")
    reinit_each_round: bool = opt(True, help="re-initialise trainable parameters at every new round (GRIP)")
    view: str = opt("weak", choices=("weak", "strong"), help="view the pseudo-label loss reads")


def top_k_per_class(probs: Tensor, k: int) -> Tensor:
    """[N, C] probabilities -> [N] labels: the k most confident samples of each predicted class keep their
    argmax, every other sample gets -1 (ties broken by the lower index)."""
    conf, pred = probs.max(dim=1)
    out = torch.full_like(pred, -1)
    for c in range(probs.shape[1]):
        idx = (pred == c).nonzero().flatten()
        if len(idx):
            order = torch.sort(-conf[idx], stable=True).indices[:k]
            out[idx[order]] = c
    return out


class _RoundPseudoLabel(Algorithm):
    iterative = True

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts = getattr(cfg, self.name)
        self.labels = torch.full((num_unlabeled,), -1, dtype=torch.long, device=device)
        self.round = -1
        self._idx: Tensor | None = None

    @property
    def needs_initial_state(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.opts, "reinit_each_round", False))

    def per_class(self, r: int) -> int:
        return self.opts.per_class

    def on_round_start(self, epoch: int, ctx: RoundContext) -> None:
        every = getattr(self.opts, "epochs_per_round", 1)
        r = epoch // every
        if epoch % every or r == self.round or (not self.iterative and self.round >= 0):
            return
        self.labels = top_k_per_class(ctx.predict_unlabeled(), self.per_class(r)).to(self.labels.device)
        if self.needs_initial_state and self.round >= 0:
            ctx.reset_parameters()
        self.round = r

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        self._idx = index.to(self.labels.device)

    def pseudo_label(self, probs_w: Tensor) -> Tensor:
        fixed = self.labels[self._idx].to(probs_w.device)
        return torch.where(fixed >= 0, fixed, probs_w.argmax(dim=1))

    def mask(self, probs_w: Tensor) -> Tensor:
        return (self.labels[self._idx] >= 0).float().to(probs_w.device)

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        x = u.weak if self.opts.view == "weak" else u.strong[0]
        ce = F.cross_entropy(heads.main(x).float(), pl, reduction="none")
        loss = self.cfg.unlabeled_weight * (ce * mask).sum() / mask.sum().clamp_min(1.0)
        logs["loss_u"] = loss.detach()
        logs["pl_selected"] = (self.labels >= 0).sum().float()
        return loss

    def state_dict(self) -> dict:
        return {"labels": self.labels.clone(), "round": self.round}

    def load_state_dict(self, state: dict) -> None:
        self.labels.copy_(state["labels"])
        self.round = int(state["round"])


@register
class FPL(_RoundPseudoLabel):
    name = "fpl"
    iterative = False


@register
class IFPL(_RoundPseudoLabel):
    name = "ifpl"


@register
class GRIP(_RoundPseudoLabel):
    name = "grip"

    def per_class(self, r: int) -> int:
        rounds = self.opts.rounds
        return math.ceil(min(r + 1, rounds) * self.num_unlabeled / (self.num_classes * rounds))
