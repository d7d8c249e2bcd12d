"""Decoupled Label Smoothing (FineSSL, Sec. 4.2): smoothed pseudo-label targets for the auxiliary head.

    code form (default):  1 - s on the label,  s / (C - 1) elsewhere
    paper form:           (1 - s) + s / C on the label,  s / C elsewhere
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError, check_choice

FORMS = ("code", "paper")


def smoothed_targets(labels: Tensor, num_classes: int, smoothing: float, form: str = "code") -> Tensor:
    """[B] integer labels -> [B, C] smoothed target distributions (rows sum to 1)."""
    check_choice("smoothing form", form, FORMS)
    if not 0.0 <= smoothing <= 1.0:
        raise UserError(f"smoothing={smoothing!r} is out of range; valid: 0 <= smoothing <= 1")
    if num_classes < 2:
        raise UserError(f"num_classes={num_classes!r} is too small for label smoothing; valid: >= 2")
    if form == "code":
        on, off = 1.0 - smoothing, smoothing / (num_classes - 1)
    else:
        on, off = 1.0 - smoothing + smoothing / num_classes, smoothing / num_classes
    on_label = labels.long().unsqueeze(1) == torch.arange(num_classes, device=labels.device)
    return torch.where(on_label, on, off).float()  # (no in-place scatter: works under torch.func.vmap)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy against target distributions ([B, C], [B, C] -> [B]), in fp32."""
    return -(targets * F.log_softmax(logits if logits.dtype == torch.float32 else logits.float(), dim=1)).sum(dim=1)


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` [B] over the rows where ``keep`` [B] is true, 0 when none is (the official
    ``loss[mask].mean() if mask.sum() > 0 else 0``), without boolean indexing or a host sync; NaN/Inf in rows
    not kept do not leak in."""
    if keep.dtype != torch.bool:
        keep = keep > 0
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)
