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
0.95 there), and updated before the mask of the same step, as in USB. The slots are FineSSL's learning pace
(``bms.LearningPace``, write="confident", zeta = tau): the same "latest confident label" rule with sigma kept
incrementally, so a step costs O(batch) at any unlabeled-set size and never waits on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..options import opt
from .base import Algorithm, register
from .bms import LearningPace


@dataclass
class FlexMatchOptions:
    threshold_warmup: bool = opt(True, help="count never-selected samples in the normaliser (paper's warm-up)")
    mapping: str = opt("convex", choices=("convex", "linear"), help="M(x): convex x/(2-x) or linear x")


def flex_thresholds(counts: Tensor, unused: int | Tensor, tau: float, warmup: bool, mapping: str) -> Tensor:
    """Per-class thresholds T(c) [C] from the class counts sigma [C] and the number of unused slots."""
    top = counts.max()
    denom = torch.maximum(top, torch.as_tensor(unused, device=counts.device)) if warmup else top
    beta = counts.float() / denom.clamp_min(1)  # denom 0 means every count is 0: beta 0, as before
    m = beta / (2 - beta) if mapping == "convex" else beta
    return tau * m


@register
class FlexMatch(Algorithm):
    name = "flexmatch"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: FlexMatchOptions = cfg.flexmatch
        self.pace = LearningPace(num_unlabeled, num_classes, cfg.threshold, device, write="confident")

    @property
    def slots(self) -> Tensor:
        return self.pace.slots

    def counts(self) -> Tensor:
        return self.pace.counts

    def thresholds(self) -> Tensor:
        unused = self.num_unlabeled - self.pace.counts.sum()
        return flex_thresholds(self.counts(), unused, self.cfg.threshold, self.opts.threshold_warmup,
                               self.opts.mapping)

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        self.pace.update(index, probs_w)  # torchrun: the pace gathers the global batch, so every rank agrees

    def mask(self, probs_w: Tensor) -> Tensor:
        conf, pred = probs_w.max(dim=1)
        return (conf >= self.thresholds().to(conf.device)[pred]).float()

    def state_dict(self) -> dict:
        return {"slots": self.slots.clone(), "counts": self.pace.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.pace.slots.copy_(state["slots"])
        s = state["slots"]  # checkpoints written before the counts were kept: count the slots once
        self.pace.counts.copy_(state["counts"] if "counts" in state else
                               torch.bincount(s[s >= 0], minlength=self.num_classes).to(self.pace.counts))
