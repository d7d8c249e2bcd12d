"""Cosine classifier heads and class-mean prototypes.

``logits = s * normalize(f) @ normalize(W).T``. The scale ``s`` is stored as ``log_scale`` (a parameter when
learnable, a buffer otherwise) and exponentiated in ``forward``. The head always computes in fp32 with autocast
disabled, so a bf16/fp16 autocast region never degrades the softmax that follows.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError


class CosineHead(nn.Module):
    """A cosine-similarity classifier with a (learnable) temperature-like scale."""

    def __init__(self, in_dim: int, num_classes: int, scale: float = 1 / 0.07, learn_scale: bool = True):
        super().__init__()
        if in_dim < 1 or num_classes < 1:
            raise UserError(f"a cosine head needs in_dim >= 1 and num_classes >= 1, got {in_dim} and {num_classes}")
        if not scale > 0:
            raise UserError(f"cosine-head scale must be > 0, got {scale}")
        self.in_dim, self.num_classes, self.learn_scale = int(in_dim), int(num_classes), bool(learn_scale)
        # Deterministic placeholder init that leaves the global RNG alone; build_model overwrites it.
        init = torch.randn(num_classes, in_dim, generator=torch.Generator().manual_seed(0))
        self.weight = nn.Parameter(init)
        log_scale = torch.tensor(math.log(scale), dtype=torch.float32)
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.float().exp()

    @torch.no_grad()
    def init_weight(self, weight: Tensor) -> None:
        """Copy prototypes ``weight`` [num_classes, in_dim] into the head."""
        expected = (self.num_classes, self.in_dim)
        if tuple(weight.shape) != expected:
            raise UserError(f"head prototypes have shape {tuple(weight.shape)}, expected {expected} (classes, feature dim)")
        if not torch.isfinite(weight).all():
            raise UserError("head prototypes contain NaN or Inf")
        self.weight.copy_(weight.to(self.weight))

    def forward(self, features: Tensor) -> Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=-1)
            w = F.normalize(self.weight.float(), dim=-1)
            return self.scale * (f @ w.t())

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_classes={self.num_classes}, learn_scale={self.learn_scale}"


def class_mean_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class mean of the L2-normalised ``features`` [N, D]; a class without a sample is a UserError."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise UserError(f"class-mean init needs features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    labels = labels.to(features.device).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes - 1}], got range [{int(labels.min())}, {int(labels.max())}]")
    f = F.normalize(features.float(), dim=-1)
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise UserError(f"class-mean head init: no labeled sample for class(es) {shown}; every class needs at least one")
    return sums / counts.unsqueeze(1).to(f.dtype)
