"""ULFine (Zhang, Li, Geng, Chen, arXiv 2505.05062, 2025): unbiased lightweight fine-tuning for long-tailed SSL.

No public code exists; /work/shared/notes/ulfine.md lists what the paper states [known] and what we chose
[choice]. Every [choice] is an option below, default as in the notes. THIS MODULE IS OUR INTERPRETATION.

Two branches share the (PEFT-tuned) features f:
    text branch   s * cos(f, c_t)    = the model's MAIN head; its rows are the text prototypes c_t [known]
                  (initialised by model.head_init: CLIP text embeddings with a CLIP backbone, class means of the
                  labeled features otherwise, e.g. the embedded EfficientNet)
    LP branch     the model's SECOND head [choice forced by the model: the trainer tunes only the main and aux
                  heads, both cosine classifiers with a learnable scale, so the "linear probe" is a cosine
                  classifier without bias, starting from the same prototypes]
Per step:
    c_v[k]   <- d c_v[k] + (1-d) mean of normalised labeled features of class k in the batch (absent: kept;
                first sight: set)                                                  [known form; d = proto_decay]
    fused    = text + lp_weight * lp (``fusion=sum``) | log of the mean of both softmaxes (``prob_avg``) |
               text + lp_weight * (lp - log prior_labeled) (``logit_adjust``)                            (DLF)
    pl, mask = argmax / max >= ``threshold`` of softmax(fused(weak))  (``pseudo_from``: fused or text)
    L        = CE(text(x), y) + CE(lp(x), y) + mean_b mask_b [CE(text(s_b), pl_b) + CE(lp(s_b), pl_b)]
               + orth_weight * ||C C^T - I||_F^2 / K^2  (C = row-normalised c_t)
    P[k]     <- e P[k] + (1-e) mean_b softmax(fused(weak))_k  (``paf_statistic=mean_prob``) or the EMA of the
                class histogram of confident pseudo-labels (``confident_count``)
    PAF      a[k] = mu P[k] / max_j P[j];  c_t[k] <- (1 - a[k]) c_t[k] + a[k] c_v[k], rows re-normalised
                (``paf_renormalise``), under no_grad. It is applied at the START of the next step (a parameter
                may not change between a loss's forward and its backward), which is the same point in training.
Test predictions come from ``predict_with`` (fused by default) through ``Algorithm.eval_logits``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import gather_rows
from ..options import opt
from .base import Algorithm, Heads, register


@dataclass
class ULFineOptions:
    threshold: float = opt(0.95, lo=0.0, hi=1.0, help="ULFine's own pseudo-label threshold (algorithm.threshold is not read)")
    proto_decay: float = opt(0.9, lo=0.0, hi=1.0, hi_open=True, help="[choice] EMA decay of the visual prototypes c_v")
    paf_mu: float = opt(0.05, lo=0.0, hi=1.0, help="[choice] PAF momentum scale mu")
    paf_statistic: str = opt("mean_prob", choices=("mean_prob", "confident_count"), help="[choice] P[k] of PAF")
    paf_stat_decay: float = opt(0.9, lo=0.0, hi=1.0, hi_open=True, help="[choice] EMA decay of P[k]")
    paf_renormalise: bool = opt(True, help="[choice] re-normalise the text prototypes after PAF")
    orth_weight: float = opt(1.0, lo=0.0, help="[choice] weight of the orthogonality loss on the text prototypes")
    fusion: str = opt("sum", choices=("sum", "prob_avg", "logit_adjust"), help="[choice] Dual Logit Fusion form")
    lp_weight: float = opt(1.0, lo=0.0, help="[choice] weight of the LP branch in the fused logits")
    pseudo_from: str = opt("fused", choices=("fused", "text"), help="[choice] logits that make the pseudo-labels")
    predict_with: str = opt("fused", choices=("fused", "text", "lp"), help="[choice] logits of the test predictions")


def orthogonality_loss(protos: Tensor) -> Tensor:
    """||C C^T - I||_F^2 / K^2 on row-normalised prototypes C [K, D]."""
    c = F.normalize(protos.float(), dim=1)
    k = c.shape[0]
    return ((c @ c.t() - torch.eye(k, device=c.device)) ** 2).sum() / k ** 2


def fuse(text: Tensor, lp: Tensor, how: str, weight: float, log_prior: Tensor | None = None) -> Tensor:
    """Dual Logit Fusion of the text-prototype and LP logits ([B, C] each)."""
    if how == "sum":
        return text + weight * lp
    if how == "prob_avg":
        return torch.log((torch.softmax(text.float(), 1) + weight * torch.softmax(lp.float(), 1)) / (1 + weight))
    return text + weight * (lp - log_prior)


@register
class ULFine(Algorithm):
    name = "ulfine"

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: ULFineOptions = cfg.ulfine
        self.visual: Tensor | None = None                  # c_v [C, D], created on first sight of a feature
        self.visual_seen = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.stat = torch.full((num_classes,), 1.0 / num_classes, device=device)  # P[k]
        self.labeled_counts = torch.zeros(num_classes, device=device)
        self._heads: Heads | None = None

    # -- logits ------------------------------------------------------------------------------------------
    def _log_prior(self) -> Tensor:
        c = self.labeled_counts + 1.0  # Laplace: no class has prior 0
        return torch.log(c / c.sum())

    def fused(self, heads: Heads, f: Tensor) -> Tensor:
        return fuse(heads.main(f).float(), heads.aux(f).float(), self.opts.fusion, self.opts.lp_weight,
                    self._log_prior().to(f.device))

    def eval_logits(self, heads: Heads, features: Tensor) -> Tensor:
        w = self.opts.predict_with
        return heads.main(features) if w == "text" else heads.aux(features) if w == "lp" else self.fused(heads, features)

    # -- PAF -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _paf(self, heads: Heads) -> None:
        if self.visual is None or not self.visual_seen.any():
            return
        w = heads.main.weight
        a = (self.opts.paf_mu * self.stat / self.stat.max().clamp_min(1e-12)) * self.visual_seen
        a = a.to(w.device, torch.float).unsqueeze(1)
        new = (1 - a) * w.float() + a * self.visual.to(w.device)
        if self.opts.paf_renormalise:
            new = F.normalize(new, dim=1) * w.float().norm(dim=1, keepdim=True)
        w.copy_(new.to(w.dtype))

    @torch.no_grad()
    def _update_visual(self, fx: Tensor, y: Tensor) -> None:
        fx, y = gather_rows(fx.detach(), y)  # torchrun: the global batch's class means, the same on every rank
        f = F.normalize(fx.detach().float(), dim=1)
        if self.visual is None:
            self.visual = torch.zeros(self.num_classes, f.shape[1], device=f.device)
        y = y.to(f.device)
        sums = torch.zeros_like(self.visual).index_add_(0, y, f)
        counts = torch.bincount(y, minlength=self.num_classes).to(f.device)
        present = counts > 0
        mean = sums[present] / counts[present].unsqueeze(1)
        seen = self.visual_seen.to(f.device)[present].unsqueeze(1)
        d = self.opts.proto_decay
        self.visual[present] = torch.where(seen, d * self.visual[present] + (1 - d) * mean, mean)
        self.visual_seen |= present.to(self.visual_seen.device)
        self.labeled_counts += counts.to(self.labeled_counts.device).float()

    # -- the step ------------------------------------------------------------------------------------------
    def step(self, heads, fx, y, u=None, u_index=None):
        self._paf(heads)          # the PAF update of the previous step (see the module docstring)
        self._heads = heads
        return super().step(heads, fx, y, u, u_index)

    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        with torch.no_grad():
            logits = self.fused(self._heads, self._weak) if self.opts.pseudo_from == "fused" else None
        self._probs = torch.softmax(logits.float(), 1) if logits is not None else probs_w
        e = self.opts.paf_stat_decay
        if self.opts.paf_statistic == "mean_prob":
            now = gather_rows(self._probs)[0].mean(0)  # torchrun: the global batch
        else:
            conf, pred = gather_rows(self._probs)[0].max(1)
            now = torch.bincount(pred[conf >= self.opts.threshold], minlength=self.num_classes).float() / len(pred)
        self.stat = e * self.stat + (1 - e) * now.to(self.stat.device)

    def pseudo_label(self, probs_w: Tensor) -> Tensor:
        return self._probs.argmax(1)

    def mask(self, probs_w: Tensor) -> Tensor:
        return (self._probs.max(1).values >= self.opts.threshold).float()

    def aux_probs(self, heads, u):
        self._weak = u.weak  # features of the weak view, for the fused pseudo-labels in observe
        return None

    def supervised_loss(self, heads, fx, y, logs):
        self._update_visual(fx, y)
        text = F.cross_entropy(heads.main(fx).float(), y)
        lp = F.cross_entropy(heads.aux(fx).float(), y)
        orth = orthogonality_loss(heads.main.weight)
        logs.update(loss_x=text.detach(), loss_x_lp=lp.detach(), loss_orth=orth.detach())
        return text + lp + self.opts.orth_weight * orth

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        s = u.strong[0]
        text = (F.cross_entropy(heads.main(s).float(), pl, reduction="none") * weight).mean()
        lp = (F.cross_entropy(heads.aux(s).float(), pl, reduction="none") * weight).mean()
        loss = self.cfg.unlabeled_weight * (text + lp)
        logs["loss_u"] = loss.detach()
        return loss

    def state_dict(self) -> dict:
        return {"visual": None if self.visual is None else self.visual.clone(),
                "visual_seen": self.visual_seen.clone(), "stat": self.stat.clone(),
                "labeled_counts": self.labeled_counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        dev = self.stat.device
        self.visual = None if state["visual"] is None else state["visual"].to(dev)
        self.visual_seen = state["visual_seen"].to(dev)
        self.stat, self.labeled_counts = state["stat"].to(dev), state["labeled_counts"].to(dev)
