"""SoftMatch (Chen et al., ICLR 2023): a truncated-Gaussian soft weight instead of a 0/1 mask, and uniform
alignment of the weak-view predictions.

Differs from FixMatch in the pseudo-label source and the weight. EMA momentum m (0.999):
    alignment   p_model = mean_b p_b on the first step, then m p_model + (1-m) mean_b p_b (updated first);
                p~ = SumNorm(p * (u + 1e-6) / (p_model + 1e-6)), u = uniform          (``uniform_alignment``)
    statistics  mu_t = m mu_t + (1-m) mean(max p~),  var_t = m var_t + (1-m) var(max p~) (unbiased);
                start mu_t = 1/C, var_t = 1
    weight      w = lambda_max * exp(-(min(max p~ - mu_t, 0))^2 / (2 var_t / n_sigma^2))
    pseudo-label argmax p~;  Lu = mean_b w_b CE(strong_b, argmax p~_b)
Every sample takes part (mask = 1 for all: ``pl_mask_ratio`` reads 1); the information is in the weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import gather_rows
from ..options import opt
from .base import Algorithm, register


@dataclass
class SoftMatchOptions:
    ema: float = opt(0.999, lo=0.0, hi=1.0, hi_open=True, help="EMA momentum of mu_t, var_t and p_model")
    n_sigma: float = opt(2.0, lo=0.0, lo_open=True, help="width of the Gaussian in standard deviations")
    lambda_max: float = opt(1.0, lo=0.0, help="largest sample weight")
    uniform_alignment: bool = opt(True, help="align weak predictions to a uniform class prior")


@register
class SoftMatch(Algorithm):
    name = "softmatch"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: SoftMatchOptions = cfg.softmatch
        self.mu_t = torch.tensor(1.0 / num_classes, device=device)
        self.var_t = torch.tensor(1.0, device=device)
        self.p_model: Tensor | None = None
        self._aligned: Tensor | None = None

    def align(self, probs_w: Tensor) -> Tensor:
        if not self.opts.uniform_alignment:
            return probs_w
        m, mean = self.opts.ema, gather_rows(probs_w)[0].mean(0)  # torchrun: the global batch's mean
        self.p_model = mean if self.p_model is None else m * self.p_model + (1 - m) * mean
        p = probs_w * (1.0 / self.num_classes + 1e-6) / (self.p_model + 1e-6)
        return p / p.sum(dim=1, keepdim=True)

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        p = self._aligned = self.align(probs_w)
        conf, m = gather_rows(p.max(dim=1).values)[0], self.opts.ema  # torchrun: global mu_t / var_t
        var = conf.var(unbiased=True) if len(conf) > 1 else torch.zeros_like(conf.sum())
        self.mu_t = m * self.mu_t + (1 - m) * conf.mean()
        self.var_t = m * self.var_t + (1 - m) * var

    def pseudo_label(self, probs_w: Tensor) -> Tensor:
        return self._aligned.argmax(dim=1)

    def mask(self, probs_w: Tensor) -> Tensor:
        return torch.ones(len(probs_w), device=probs_w.device)

    def weight(self, probs_w, probs_aux, mask) -> Tensor:
        conf = self._aligned.max(dim=1).values
        z = torch.clamp(conf - self.mu_t, max=0.0)
        return self.opts.lambda_max * torch.exp(-(z ** 2) / (2 * self.var_t / self.opts.n_sigma ** 2))

    def state_dict(self) -> dict:
        return {"mu_t": self.mu_t.clone(), "var_t": self.var_t.clone(),
                "p_model": None if self.p_model is None else self.p_model.clone()}

    def load_state_dict(self, state: dict) -> None:
        dev = self.mu_t.device
        self.mu_t, self.var_t = state["mu_t"].to(dev), state["var_t"].to(dev)
        self.p_model = None if state["p_model"] is None else state["p_model"].to(dev)
