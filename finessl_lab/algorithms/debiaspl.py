"""DebiasPL (Wang et al., CVPR 2022, "Debiased Learning from Naturally Imbalanced Pseudo-Labels").

Differs from FixMatch in two places, both driven by a running class prior p_hat (EMA over the class axis of the
batch's weak-view softmax: ``p_hat = m p_hat + (1-m) mean_b p_b``, momentum m = 0.999, start uniform):
    adaptive debiasing   pseudo-labels and mask from softmax(logits_w - tau log p_hat)   (p_hat before the update)
    adaptive marginal    Lu = mean_b mask_b CE(logits_s,b + tau log p_hat, y_hat_b)      (p_hat after the update)
With tau = 0 it is exactly FixMatch. The mean is over the BATCH axis (dim 0): a mean over the class axis, as in
some reimplementations, gives a constant prior that never moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import gather_rows
from ..options import opt
from .base import Algorithm, register


@dataclass
class DebiasPLOptions:
    tau: float = opt(0.4, lo=0.0, help="debiasing strength (0 = FixMatch)")
    ema: float = opt(0.999, lo=0.0, hi=1.0, hi_open=True, help="EMA momentum of the class prior p_hat")
    marginal_loss: bool = opt(True, help="adaptive marginal loss: add tau log p_hat to strong-view logits")


def debias(probs_w: Tensor, prior: Tensor, tau: float) -> Tensor:
    """softmax(log p - tau log prior), computed from probabilities: SumNorm(p * prior^-tau)."""
    p = probs_w * prior.clamp_min(1e-12).pow(-tau)
    return p / p.sum(dim=1, keepdim=True)


@register
class DebiasPL(Algorithm):
    name = "debiaspl"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: DebiasPLOptions = cfg.debiaspl
        self.p_hat = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self._debiased: Tensor | None = None

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        self._debiased = debias(probs_w, self.p_hat, self.opts.tau)
        m = self.opts.ema
        self.p_hat = m * self.p_hat + (1 - m) * gather_rows(probs_w)[0].mean(dim=0)  # torchrun: global prior

    def pseudo_label(self, probs_w: Tensor) -> Tensor:
        return self._debiased.argmax(dim=1)

    def mask(self, probs_w: Tensor) -> Tensor:
        return (self._debiased.max(dim=1).values >= self.cfg.threshold).float()

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        logits = heads.main(u.strong[0]).float()
        if self.opts.marginal_loss and self.opts.tau:
            logits = logits + self.opts.tau * torch.log(self.p_hat.clamp_min(1e-12))
        loss = self.cfg.unlabeled_weight * (F.cross_entropy(logits, pl, reduction="none") * weight).mean()
        logs["loss_u"] = loss.detach()
        return loss

    def state_dict(self) -> dict:
        return {"p_hat": self.p_hat.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.p_hat = state["p_hat"].to(self.p_hat.device)
