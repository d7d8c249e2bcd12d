"""Pseudo-Label (Lee, 2013): hard pseudo-labels from the model's own prediction, kept above a confidence
threshold, and cross-entropy on the SAME (weak) view -- no strong augmentation, no consistency between views.

Differs from the FixMatch template only in the view the loss reads (``view``) and in an optional linear ramp-up
of the unlabeled weight over the first ``rampup_steps`` steps (USB: 40% of training; here 0 = no ramp, the
FineSSL paper's baseline setting does not say). The step counter is saved with the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..options import opt
from .base import Algorithm, register


@dataclass
class PseudoLabelOptions:
    view: str = opt("weak", choices=("weak", "strong"), help="view the unlabeled loss reads (Lee 2013: weak)")
    rampup_steps: int = opt(0, lo=0, help="linear ramp-up of the unlabeled weight over this many steps (0 = none)")


@register
class PseudoLabel(Algorithm):
    name = "pseudolabel"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: PseudoLabelOptions = cfg.pseudolabel
        self.t = 0  # steps taken (for the ramp-up)

    def ramp(self) -> float:
        r = self.opts.rampup_steps
        return 1.0 if r == 0 else min(1.0, self.t / r)

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        x = u.weak if self.opts.view == "weak" else u.strong[0]
        per_sample = F.cross_entropy(heads.main(x).float(), pl, reduction="none")
        loss = self.ramp() * self.cfg.unlabeled_weight * (per_sample * weight).mean()
        self.t += 1
        logs["loss_u"] = loss.detach()
        return loss

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
