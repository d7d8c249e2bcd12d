"""Helpers shared by the PEFT methods: where a backbone's blocks are, and small bottleneck modules."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def blocks(backbone) -> list[nn.Module]:
    """The backbone's block sequence, bottom to top (ViT resblocks; CNN units, see Backbone.units)."""
    return list(backbone.blocks())


def ref_device(backbone) -> torch.device:
    return next(backbone.peft_root.parameters()).device


class Bottleneck(nn.Module):
    """``up(relu(down(x)))`` with ``up`` zero-initialised, so the branch adds exactly 0 at init (Adapter,
    AdaptFormer). ``down`` gets PyTorch's default (kaiming-uniform, a=sqrt(5)) init from ``generator``."""

    def __init__(self, width: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        with torch.no_grad():
            bound = 1 / math.sqrt(width)  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.uniform_(-bound, bound, generator=generator)
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.relu(self.down(x.to(self.down.weight.dtype)))).to(x.dtype)


def mlp_of(block: nn.Module) -> nn.Module:
    mlp = getattr(block, "mlp", None)
    if not isinstance(mlp, nn.Module):
        raise TypeError(f"block {type(block).__name__} has no .mlp")
    return mlp


def width_of(backbone) -> int:
    return int(backbone.width)
