"""Balanced Margin Softmax (FineSSL, Sec. 4.1): per-class margins from the class learning pace.

Pure tensor functions plus :class:`LearningPace`, the O(batch)-per-step bookkeeping of sigma(k).

    sigma(k)  = #unlabeled samples whose latest weak-view prediction is k with confidence >= zeta
    beta(k)   = sigma(k) / max_k sigma(k)              (all zeros while nothing is selected)
    alpha_t   = (max beta - min beta) * alpha_base     (dynamic scale)
    m(y)      = alpha_t * (1 - beta(y)) / (1 + beta(y))   code form (default; produced the published numbers)
              = alpha_t * (1 - beta(y))                   paper form
    logits'   = logits + m(y) on every non-target entry of a row with target y
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..distributed import gather_rows
from ..errors import check_choice

FORMS = ("code", "paper")


def margin_shape(beta: Tensor, form: str = "code") -> Tensor:
    """The per-class shape of the margin before scaling: (1-b)/(1+b) (code) or 1-b (paper)."""
    check_choice("margin form", form, FORMS)
    return (1 - beta) / (1 + beta) if form == "code" else 1 - beta


def dynamic_alpha(beta: Tensor, alpha_base: float) -> Tensor:
    """alpha_t = (max beta - min beta) * alpha_base: margins grow with the disparity of class paces."""
    return (beta.max() - beta.min()) * alpha_base


def balanced_margins(beta: Tensor, alpha_base: float, form: str = "code") -> Tensor:
    """Per-class margin m(y) [C] from the normalised learning pace ``beta`` [C]."""
    return dynamic_alpha(beta, alpha_base) * margin_shape(beta, form)


def apply_margins(logits: Tensor, targets: Tensor, margins: Tensor) -> Tensor:
    """Add ``margins[targets[i]]`` to every non-target logit of row i ([B, C] -> [B, C])."""
    m = margins.to(logits.dtype)[targets].unsqueeze(1).expand_as(logits)
    not_target = targets.unsqueeze(1) != torch.arange(logits.shape[1], device=logits.device)
    return logits + m * not_target


def normalised_pace(counts: Tensor) -> Tensor:
    """beta = sigma / max sigma, or zeros if nothing has been selected yet."""
    return counts.float() / counts.max().clamp_min(1)  # all counts 0 -> zeros (no host sync for the test)


class LearningPace:
    """One slot per unlabeled sample holding its latest confident pseudo-label (-1 if none), as in the official
    code, with the per-class counts kept incrementally so that an update costs O(batch), not O(dataset).

    ``write="confident"`` (official): only predictions with confidence >= zeta write their slot; an unconfident
    visit keeps the slot's old label. ``write="all"``: every visit writes, -1 when unconfident."""

    WRITES = ("confident", "all")

    def __init__(self, num_unlabeled: int, num_classes: int, zeta: float, device=None, write: str = "confident"):
        self.zeta = zeta
        self.write = check_choice("pace write mode", write, self.WRITES)
        # one spare slot at the end takes the writes that change nothing (so no boolean indexing, no host sync)
        self._slots = torch.full((num_unlabeled + 1,), -1, dtype=torch.long, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.long, device=device)

    @property
    def slots(self) -> Tensor:
        """[N_u] the latest confident pseudo-label of each unlabeled sample, -1 if none."""
        return self._slots[:-1]

    def update(self, index: Tensor, probs: Tensor) -> None:
        """Record the weak-view predictions ``probs`` [B, C] of unlabeled samples ``index`` [B]."""
        index, probs = gather_rows(index, probs)  # torchrun: the global batch, so every rank keeps the same pace
        conf, pred = probs.max(dim=1)
        confident = conf >= self.zeta
        new = torch.where(confident, pred, -1).to(self.slots.device)
        index = index.to(self.slots.device)
        writes = confident.to(self.slots.device) if self.write == "confident" else torch.ones_like(confident)
        # a sample may appear twice in a batch: its last writing occurrence wins. Sort by (index, position of the
        # writing occurrence, -1 for a non-writing one); the last entry of each index group decides.
        b = index.numel()
        rank = torch.where(writes, torch.arange(b, device=index.device), -1)
        order = torch.sort(index * (b + 1) + rank + 1).indices
        idx, rank, new = index[order], rank[order], new[order]
        last = torch.ones_like(idx, dtype=torch.bool)
        last[:-1] = idx[1:] != idx[:-1]
        live = last & (rank >= 0)
        target = torch.where(live, idx, self.slots.numel())   # the others write -1 into the spare slot
        new = torch.where(live, new, -1)
        old = self._slots[target]
        self.counts.index_add_(0, old.clamp_min(0), -(old >= 0).long())
        self.counts.index_add_(0, new.clamp_min(0), (new >= 0).long())
        self._slots[target] = new

    def beta(self) -> Tensor:
        return normalised_pace(self.counts)

    def reset(self) -> None:
        self._slots.fill_(-1)
        self.counts.zero_()

    def state_dict(self) -> dict:
        return {"slots": self.slots.clone(), "counts": self.counts.clone(), "zeta": self.zeta}

    def load_state_dict(self, state: dict) -> None:
        self.slots.copy_(state["slots"])
        self.counts.copy_(state["counts"])
        self.zeta = state["zeta"]
