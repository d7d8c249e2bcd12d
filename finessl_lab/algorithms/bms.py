"""Balanced Margin Softmax (FineSSL, Sec. 4.1): per-class margins from the class learning pace.

Pure tensor functions plus :class:`LearningPace`, the O(batch)-per-step bookkeeping of sigma(k).

    sigma(k)  = #unlabeled samples whose latest weak-view prediction is k with confidence >= zeta
    beta(k)   = sigma(k) / max_k sigma(k)              (all zeros while nothing is selected)
    alpha_t   = (max beta - min beta) * alpha_base     (dynamic scale)
    m(y)      = alpha_t * (1 - beta(y)) / (1 + beta(y))   code form (default; produced the published numbers)
              = alpha_t * (1 - beta(y))                   paper form
    logits'   = logits + m(y) on every non-target entry of a row with target y

A training step computes the margins once and reads them through :func:`margin_table` ([C, C], one gather per
loss instead of building the non-target mask per row); the values are bit for bit those of :func:`apply_margins`.
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
    lo, hi = torch.aminmax(beta)  # one pass, the same values as beta.min() / beta.max()
    return (hi - lo) * alpha_base


def balanced_margins(beta: Tensor, alpha_base: float, form: str = "code") -> Tensor:
    """Per-class margin m(y) [C] from the normalised learning pace ``beta`` [C]."""
    return dynamic_alpha(beta, alpha_base) * margin_shape(beta, form)


def apply_margins(logits: Tensor, targets: Tensor, margins: Tensor) -> Tensor:
    """Add ``margins[targets[i]]`` to every non-target logit of row i ([B, C] -> [B, C])."""
    m = margins.to(logits.dtype)[targets].unsqueeze(1).expand_as(logits)
    not_target = targets.unsqueeze(1) != torch.arange(logits.shape[1], device=logits.device)
    return logits + m * not_target


def margin_table(margins: Tensor, off_diagonal: Tensor | None = None) -> Tensor:
    """[C] margins -> [C, C] table whose row y is what :func:`apply_margins` adds to a row with target y
    (``margins[y]`` off the diagonal, 0 on it: the same products ``m * not_target``). ``off_diagonal``: the
    [C, C] boolean ``~eye(C)`` if the caller keeps one."""
    if off_diagonal is None:
        off_diagonal = ~torch.eye(margins.shape[-1], dtype=torch.bool, device=margins.device)
    return margins.unsqueeze(-1) * off_diagonal


def apply_margin_table(logits: Tensor, targets: Tensor, table: Tensor) -> Tensor:
    """``apply_margins(logits, targets, margins)`` with ``table = margin_table(margins)``: one gather and one add."""
    if table.dtype != logits.dtype:
        table = table.to(logits.dtype)
    return logits + table[targets]


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
        self._const: dict = {}  # per batch size: constants of update() (not state)

    @property
    def slots(self) -> Tensor:
        """[N_u] the latest confident pseudo-label of each unlabeled sample, -1 if none."""
        return self._slots[:-1]

    # batches up to this size find repeated samples by comparing all pairs ([B, B] booleans, a few ops); larger
    # ones sort (O(B log B), more ops)
    PAIRWISE_MAX = 512

    def update(self, index: Tensor, probs: Tensor, top: tuple[Tensor, Tensor] | None = None) -> None:
        """Record the weak-view predictions ``probs`` [B, C] of unlabeled samples ``index`` [B]; ``top`` =
        ``probs.max(dim=1)`` when the caller has it already (then ``probs`` is not read)."""
        conf, pred = probs.max(dim=1) if top is None else top
        index, conf, pred = gather_rows(index, conf, pred)  # torchrun: the global batch, so every rank keeps the same pace
        dev = self._slots.device
        index, conf, pred = index.to(dev), conf.to(dev), pred.to(dev)  # (no-ops on the slots' device)
        confident = conf >= self.zeta
        # a sample may appear twice in a batch: its last writing occurrence wins (a non-writing one changes nothing)
        b = index.numel()
        later, spare, minus1, sign = self._constants(b, dev)  # later: [B, B] k > j, or None for large batches
        if later is not None:
            # live = writes here and no later writing occurrence of the same sample
            shadowed = (index.unsqueeze(1) == index) & later         # [j, k]: k is a later occurrence of j's sample
            if self.write == "confident":
                live = confident > (shadowed & confident).any(dim=1)  # bool: writes and not shadowed by a later write
            else:
                live = ~shadowed.any(dim=1)
        else:
            live = self._live_sorted(index, confident)
        new = torch.where(live & confident if self.write == "all" else live, pred, minus1)
        target = torch.where(live, index, spare)  # the others write -1 into the spare slot
        old = self._slots.index_select(0, target)
        both = torch.cat([old, new])  # counts: -1 for each old label, +1 for each new one (-1 = none: adds 0)
        self.counts.index_add_(0, both.clamp_min(0), sign * (both >= 0))
        self._slots.index_put_((target,), new)

    def _live_sorted(self, index: Tensor, writes: Tensor) -> Tensor:
        """``live`` for large batches: sort by (index, position of the writing occurrence, -1 for a non-writing
        one); the last entry of each index group decides."""
        b = index.numel()
        if self.write == "all":
            writes = torch.ones_like(writes)
        rank = torch.where(writes, torch.arange(b, device=index.device), -1)
        order = torch.sort(index * (b + 1) + rank + 1).indices
        idx = index[order]
        last = torch.ones_like(idx, dtype=torch.bool)
        last[:-1] = idx[1:] != idx[:-1]
        live = torch.zeros_like(last)
        live[order] = last & (rank[order] >= 0)
        return live

    def _constants(self, b: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-batch-size constants (built once): the strict upper triangle [B, B] (or None for large B), the
        spare slot's index, -1, and the count signs (-1 x B, +1 x B)."""
        key = (b, device)
        got = self._const.get(key)
        if got is None:
            tri = torch.ones(b, b, dtype=torch.bool, device=device).triu(1) if b <= self.PAIRWISE_MAX else None
            sign = torch.cat([torch.full((b,), -1, dtype=torch.long, device=device),
                              torch.ones(b, dtype=torch.long, device=device)])
            got = self._const[key] = (tri, torch.tensor(self._slots.shape[-1] - 1, device=device),
                                      torch.tensor(-1, dtype=torch.long, device=device), sign)
        return got

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
