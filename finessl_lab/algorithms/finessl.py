"""FineSSL (Gan & Wei, ICML 2024) = Balanced Margin Softmax + Decoupled Label Smoothing + reweighting.

How it differs from the FixMatch template in base.py:
  1. margins  m(y) from the class learning pace sigma as it stood BEFORE this batch (bms.balanced_margins),
              added to non-target logits of the main head in the supervised and consistency losses
  2. weights  EVERY unlabeled sample is used, weighted by psi = max softmax(aux(weak)) instead of a 0/1 mask
  3. aux head fed detached features, trained with CE on labeled data and smoothed pseudo-labels
              (dls.smoothed_targets), averaged over the rows the main head's threshold masks in
  4. pace     after the losses, confident weak-view predictions write their pace slot (bms.LearningPace)
Both unlabeled losses read the two strong views concatenated (2U rows, labels and weights repeated).
Total: L = Lx(main, BMS) + Lx(aux) + gamma * Lu(main, BMS, psi) + Lu(aux, smoothed, mask).
Per step, the weak-view max (confidence, pseudo-label), the margin table and the smoothed-target table are computed
once and shared by the hooks (the values are bit for bit those of the per-hook forms; tests/test_head_step.py).
The official code's forms are the defaults; each earlier finessl_lab form is a named option (README "Fidelity"),
and every ablation of the paper's Table 6 is an option below.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import global_masked_mean
from ..options import opt
from .base import Algorithm, Heads, UnlabeledViews, fp32, probs, register
from .bms import LearningPace, apply_margin_table, balanced_margins, margin_shape, margin_table
from .dls import masked_mean, smoothed_targets, soft_cross_entropy


@dataclass
class FineSSLOptions:
    zeta: float = opt(0.7, lo=0.0, hi=1.0, help="confidence a prediction needs to count towards the class pace")
    alpha_base: float = opt(8.0, lo=0.0, help="base margin scale alpha")
    smoothing: float = opt(0.5, lo=0.0, hi=1.0, hi_open=True, help="label smoothing lambda of the aux head")
    gamma: float = opt(3.0, lo=0.0, help="weight of the main consistency loss (1.0 for CIFAR-10 N1)")
    weight_floor: float = opt(0.0, lo=0.0, hi=1.0, help="psi below this is set to 0 (official th_min)")
    margin_form: str = opt("code", choices=("code", "paper"), help="BMS margin: code (1-b)/(1+b) or paper 1-b")
    smoothing_form: str = opt("code", choices=("code", "paper"), help="DLS targets: code s/(C-1) or paper s/C")
    pace_reset_each_epoch: bool = opt(True, help="clear the per-sample pace slots every epoch (official)")
    # loss semantics (README "Fidelity" items 1-4): official forms by default
    strong_views: str = opt("both", choices=("both", "split"),
                            help="both = both unlabeled losses read the 2 strong views concatenated (official); "
                                 "split = main loss on view 1, aux loss on view 2")
    aux_mean: str = opt("masked", choices=("masked", "batch"),
                        help="aux smoothed loss averaged over masked rows (official) or over the whole batch")
    margin_timing: str = opt("before", choices=("before", "after"),
                             help="margins from the pace before the batch (official) or after adding it")
    pace_write: str = opt("confident", choices=("confident", "all"),
                          help="only confident predictions write a pace slot (official), or every visit (-1 if not)")
    # ablations (paper Table 6)
    bms: bool = opt(True, help="ablation: False = no Balanced Margin Softmax")
    dynamic_alpha: bool = opt(True, help="ablation: False = fixed alpha_base instead of alpha_t")
    bms_supervised: bool = opt(True, help="ablation: False = margins on the consistency loss only")
    dls: bool = opt(True, help="ablation: False = no aux head, no reweighting (thresholded mask instead)")
    smoothing_on_main: bool = opt(False, help="ablation: smoothed targets and psi on the main head, no aux head")
    detach_aux: bool = opt(True, help="ablation: False = aux head gradients reach the backbone/PEFT")


@register
class FineSSL(Algorithm):
    name = "finessl"
    num_strong = 2
    stack_state = ("pace._slots", "pace.counts", "margins")  # per-run state when trained stacked (stacked.py)

    def __init__(self, cfg, num_classes, num_unlabeled, device=None):
        super().__init__(cfg, num_classes, num_unlabeled, device)
        self.opts: FineSSLOptions = cfg.finessl
        self.pace = LearningPace(num_unlabeled, num_classes, self.opts.zeta, device, write=self.opts.pace_write)
        self.margins = torch.zeros(num_classes, device=device)
        self._step_cache: dict = {}  # this step's weak-view max and margin table (cleared after the losses)
        self._off_eye: Tensor | None = None  # [C, C] ~eye(C) for the margin table (constant)
        self._smooth_table: tuple | None = None  # (options, [C, C] smoothed targets: row = label)

    @property
    def uses_aux(self) -> bool:
        return self.opts.dls and not self.opts.smoothing_on_main

    def _aux_in(self, f: Tensor) -> Tensor:
        return f.detach() if self.opts.detach_aux and f.requires_grad else f  # (cached features: nothing to cut)

    # 1. margins (from the pace before the batch) ... 4. pace update after the losses
    def observe(self, index: Tensor, probs_w: Tensor) -> None:
        c = self._step_cache
        if self.opts.margin_timing == "after":  # (weak_top: the step's one max, read by the mask and the label too)
            self.pace.update(index, probs_w, self.weak_top(probs_w))
        self._set_margins(probs_w.device)
        c["table"] = margin_table(self.margins, self._off_diagonal(probs_w.device))

    def after_losses(self, index: Tensor, probs_w: Tensor) -> None:
        if self.opts.margin_timing == "before":
            self.pace.update(index, probs_w, self.weak_top(probs_w))
        self._step_cache = {}

    def mask(self, probs_w: Tensor) -> Tensor:
        keep = self.weak_top(probs_w).values >= self.cfg.threshold
        self._step_cache["keep"] = keep  # the boolean form for the aux head's masked mean
        return keep.float()

    def _margin_table(self) -> Tensor:
        table = self._step_cache.get("table")
        return table if table is not None else margin_table(self.margins)

    def _off_diagonal(self, device) -> Tensor:
        t = self._off_eye
        if t is None or t.device != device:
            t = self._off_eye = ~torch.eye(self.num_classes, dtype=torch.bool, device=device)
        return t

    def _set_margins(self, device) -> None:
        beta = self.pace.beta().to(device)
        if not self.opts.bms:
            self.margins = torch.zeros_like(beta)
            return
        if self.opts.dynamic_alpha:
            # before any pace beta is all 0, so alpha_t = 0 and the margins are exactly 0 already
            self.margins = balanced_margins(beta, self.opts.alpha_base, self.opts.margin_form)
        else:
            m = self.opts.alpha_base * margin_shape(beta, self.opts.margin_form)
            self.margins = torch.where(self.pace.counts.to(device).max() > 0, m, 0.0)  # no margins before any pace

    def on_epoch_start(self, epoch: int) -> None:
        if self.opts.pace_reset_each_epoch:
            self.pace.reset()

    # 3. weights
    def aux_probs(self, heads: Heads, u: UnlabeledViews) -> Tensor | None:
        return probs(heads.aux(u.weak)) if self.uses_aux else None

    def weight(self, probs_w: Tensor, probs_aux: Tensor | None, mask: Tensor) -> Tensor:
        if self.opts.smoothing_on_main:
            psi = probs_w.max(dim=1).values
        elif self.uses_aux:
            psi = probs_aux.max(dim=1).values
        else:
            return mask
        if self.opts.weight_floor <= 0:  # psi >= 0 always (a NaN stays NaN either way): nothing to floor
            return psi
        return psi * (psi >= self.opts.weight_floor)

    # losses
    def supervised_loss(self, heads: Heads, fx: Tensor, y: Tensor, logs: dict) -> Tensor:
        logits = fp32(heads.main(fx))
        if self.opts.bms_supervised:
            table = self._step_cache.get("table")  # (this step's, or built from the margins outside a step)
            logits = apply_margin_table(logits, y, table if table is not None else self._margin_table())
        loss = F.cross_entropy(logits, y)
        logs["loss_x"] = loss.detach()
        if self.uses_aux:
            aux = F.cross_entropy(fp32(heads.aux(self._aux_in(fx))), y)
            logs["loss_x_aux"] = aux.detach()
            loss = loss + aux
        return loss

    def _views(self, u: UnlabeledViews, which: int) -> Tensor:
        """The strong-view rows a loss reads: both views stacked (official) or view ``which`` alone."""
        if self.opts.strong_views != "both":
            return u.strong[which]
        if getattr(u, "_both", None) is None:  # concatenated once per step for both heads
            u._both = torch.cat(list(u.strong[:2]))
        return u._both

    def _repeat(self, t: Tensor) -> Tensor:
        return torch.cat([t, t]) if self.opts.strong_views == "both" else t

    def unlabeled_loss(self, heads: Heads, u: UnlabeledViews, pl: Tensor, mask: Tensor, weight: Tensor,
                       logs: dict) -> Tensor:
        pl2, weight2 = self._repeat(pl), self._repeat(weight)
        table = self._step_cache.get("table")
        logits = apply_margin_table(fp32(heads.main(self._views(u, 0))), pl2,
                                    table if table is not None else self._margin_table())
        if self.opts.smoothing_on_main:
            per_sample = soft_cross_entropy(logits, self._smooth(pl2))
        else:
            per_sample = F.cross_entropy(logits, pl2, reduction="none")
        loss = self.opts.gamma * (per_sample * weight2).mean()
        logs["loss_u"] = loss.detach()
        logs["alpha_t"] = self.margins.max()
        if self.uses_aux:
            per = soft_cross_entropy(heads.aux(self._aux_in(self._views(u, 1))), self._smooth(pl2))
            keep = self._step_cache.get("keep")  # the same rows as ``mask``, as booleans (mask() of this step)
            mask2 = self._repeat(keep if keep is not None and keep.shape == mask.shape else mask)
            if self.opts.aux_mean == "batch":
                aux = (per * mask2).mean()
            else:  # official: mean over the masked rows only, 0 when none is masked
                aux = masked_mean(per, mask2)
                aux = global_masked_mean(per, mask2, aux)  # torchrun: over the global batch's masked rows
            logs["loss_u_aux"] = aux.detach()
            loss = loss + aux
        return loss

    def _smooth(self, pl: Tensor) -> Tensor:
        """Smoothed targets of labels ``pl``: rows of a [C, C] table built once (dls.smoothed_targets)."""
        key = (self.opts.smoothing, self.opts.smoothing_form, pl.device)
        if self._smooth_table is None or self._smooth_table[0] != key:
            labels = torch.arange(self.num_classes, device=pl.device)
            self._smooth_table = key, smoothed_targets(labels, self.num_classes, *key[:2])
        return self._smooth_table[1][pl]

    def state_dict(self) -> dict:
        return {"pace": self.pace.state_dict(), "margins": self.margins.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.pace.load_state_dict(state["pace"])
        self.margins = state["margins"].to(self.margins.device)
