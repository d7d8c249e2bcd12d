"""FlexMatch (Zhang et al., NeurIPS 2021): Curriculum Pseudo Labeling -- a per-class flexible threshold.

Differs from FixMatch only in the mask:
    slots[i]  = latest pseudo-label of unlabeled sample i whose confidence reached tau (-1 = never); a visit
                below tau leaves the old slot (official code)
    sigma(c)  = #{i : slots[i] = c}
    beta(c)   = sigma(c) / max(max_c sigma, #unused)   with threshold warm-up (default)
              = sigma(c) / max_c sigma                  without (all zeros while nothing is selected)
    T(c)      = tau * M(beta(c)),   M(x) = x / (2 - x) (convex, default) or x (linear)
    mask      = max p >= T(argmax p)
The slots are counted with the CONFIGURED threshold ``algorithm.threshold`` (some reimplementations hard-code
0.95 there), and updated before the mask of the same step, as in USB.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import gather_rows
from ..options import opt
from .base import Algorithm, register


@dataclass
class FlexMatchOptions:
    threshold_warmup: bool = opt(True, help="count never-selected samples in the normaliser (paper's warm-up)")
    mapping: str = opt("convex", choices=("convex", "linear"), help="M(x): convex x/(2-x) or linear x")


def flex_thresholds(counts: Tensor, unused: int, tau: float, warmup: bool, mapping: str) -> Tensor:
    """Per-class thresholds T(c) [C] from the class counts sigma [C] and the number of unused slots."""
    top = int(counts.max())
    denom = max(top, unused) if warmup else top
    beta = counts.float() / denom if denom > 0 else torch.zeros_like(counts, dtype=torch.float)
    m = beta / (2 - beta) if mapping == "convex" else beta
    return tau * m


@register
class FlexMatch(Algorithm):
    name = "flexmatch"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: FlexMatchOptions = cfg.flexmatch
        self.slots = torch.full((num_unlabeled,), -1, dtype=torch.long, device=device)

    def counts(self) -> Tensor:
        s = self.slots
        return torch.bincount(s[s >= 0], minlength=self.num_classes)

    def thresholds(self) -> Tensor:
        unused = int((self.slots < 0).sum())
        return flex_thresholds(self.counts(), unused, self.cfg.threshold, self.opts.threshold_warmup,
                               self.opts.mapping)

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        index, probs_w = gather_rows(index, probs_w)  # torchrun: every rank writes the global batch's slots
        conf, pred = probs_w.max(dim=1)
        sel = (conf >= self.cfg.threshold).to(self.slots.device)
        self.slots[index.to(self.slots.device)[sel]] = pred.to(self.slots.device)[sel]

    def mask(self, probs_w: Tensor) -> Tensor:
        conf, pred = probs_w.max(dim=1)
        return (conf >= self.thresholds().to(conf.device)[pred]).float()

    def state_dict(self) -> dict:
        return {"slots": self.slots.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.slots.copy_(state["slots"])
