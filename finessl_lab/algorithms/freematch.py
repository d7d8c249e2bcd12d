"""FreeMatch (Wang et al., ICLR 2023): a self-adaptive threshold and a self-adaptive fairness term.

Differs from FixMatch in the mask and one extra loss. EMAs with momentum m (0.999), all starting uniform:
    tau_t      = m tau_t + (1-m) mean_b max p_b                  (global confidence)
    p_t(c)     = m p_t(c) + (1-m) mean_b p_b(c)                  (local, per class)
    h_t(c)     = m h_t(c) + (1-m) hist(argmax p_b)(c) / B         (pseudo-label histogram)
    mask       = max p >= tau_t * p_t(y_hat) / max_c p_t(c)       (updated before the mask, as in USB)
    L_f        = sum_c SumNorm(p_t / h_t)(c) * log SumNorm(pbar_s / h_s)(c)
                 over the MASKED strong-view predictions (pbar_s their mean probability, h_s their argmax
                 histogram); this is the paper's negative cross-entropy as in USB's code, 0 if nothing is masked
    L          = Lx + lambda_u Lu + lambda_f L_f   (lambda_f = ``fairness_weight``, 0.001 in USB's CIFAR configs)
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
class FreeMatchOptions:
    ema: float = opt(0.999, lo=0.0, hi=1.0, hi_open=True, help="EMA momentum of tau_t, p_t and h_t")
    fairness_weight: float = opt(0.001, lo=0.0, help="weight lambda_f of the self-adaptive fairness loss")


def _sum_norm(x: Tensor) -> Tensor:
    return x / x.sum(dim=-1, keepdim=True)


def _inv(x: Tensor) -> Tensor:
    return torch.nan_to_num(1.0 / x, nan=0.0, posinf=0.0, neginf=0.0)


def fairness_loss(logits_s: Tensor, mask: Tensor, p_t: Tensor, h_t: Tensor) -> Tensor:
    """USB's ``entropy_loss`` of FreeMatch (a scalar; 0 when no sample is masked)."""
    keep = mask.bool()
    if not keep.any():
        return logits_s.sum() * 0.0
    prob_s = torch.softmax(logits_s[keep].float(), dim=1)
    hist_s = torch.bincount(prob_s.argmax(1), minlength=prob_s.shape[1]).float()
    hist_s = hist_s / hist_s.sum()
    target = _sum_norm(p_t * _inv(h_t)).detach()
    mean_s = _sum_norm(prob_s.mean(0) * _inv(hist_s))
    return (target * torch.log(mean_s + 1e-12)).sum()


@register
class FreeMatch(Algorithm):
    name = "freematch"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: FreeMatchOptions = cfg.freematch
        c = num_classes
        self.tau_t = torch.tensor(1.0 / c, device=device)
        self.p_t = torch.full((c,), 1.0 / c, device=device)
        self.h_t = torch.full((c,), 1.0 / c, device=device)

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        m = self.opts.ema
        probs_w, = gather_rows(probs_w)  # torchrun: the EMAs of the global batch, the same on every rank
        conf, pred = probs_w.max(dim=1)
        hist = torch.bincount(pred, minlength=self.num_classes).float() / len(pred)
        self.tau_t = m * self.tau_t + (1 - m) * conf.mean()
        self.p_t = m * self.p_t + (1 - m) * probs_w.mean(0)
        self.h_t = m * self.h_t + (1 - m) * hist

    def thresholds(self) -> Tensor:
        return self.tau_t * self.p_t / self.p_t.max()

    def mask(self, probs_w: Tensor) -> Tensor:
        conf, pred = probs_w.max(dim=1)
        return (conf >= self.thresholds()[pred]).float()

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        logits_s = heads.main(u.strong[0]).float()
        lu = self.cfg.unlabeled_weight * (F.cross_entropy(logits_s, pl, reduction="none") * weight).mean()
        lf = self.opts.fairness_weight * fairness_loss(logits_s, mask, self.p_t, self.h_t)
        logs["loss_u"], logs["loss_fair"], logs["tau_t"] = lu.detach(), lf.detach(), torch.as_tensor(self.tau_t).detach()
        return lu + lf

    def state_dict(self) -> dict:
        return {"tau_t": self.tau_t.clone(), "p_t": self.p_t.clone(), "h_t": self.h_t.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.tau_t, self.p_t, self.h_t = (state[k].to(self.p_t.device) for k in ("tau_t", "p_t", "h_t"))
