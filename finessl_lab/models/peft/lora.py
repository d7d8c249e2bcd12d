"""LoRA on the query and value projections of every attention block (ViT only).

The fused input projection W [3w, w] (open_clip's ``nn.MultiheadAttention.in_proj_weight``) is reparametrised
(``torch.nn.utils.parametrize``) as ``W + (alpha / r) * [B_q A_q; 0; B_v A_v]`` with A [r, w] ~ kaiming-uniform
and B [w, r] = 0, so the outputs are unchanged at init. The frozen W stays where it was
(``parametrizations.in_proj_weight.original``); only A and B train. Defaults: r = 16, alpha = 16 (scale 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...errors import UserError
from ._common import blocks

FAMILIES = ("vit",)


class LoRAQV(nn.Module):
    """A parametrization of a fused qkv weight [3w, w]: adds the low-rank updates of its q and v rows."""

    def __init__(self, width: int, rank: int, alpha: float, generator: torch.Generator | None = None,
                 device=None):
        super().__init__()
        self.width, self.rank, self.scaling = width, rank, alpha / rank
        bound = 1 / math.sqrt(width)
        self.A_q = nn.Parameter(torch.empty(rank, width).uniform_(-bound, bound, generator=generator).to(device))
        self.A_v = nn.Parameter(torch.empty(rank, width).uniform_(-bound, bound, generator=generator).to(device))
        self.B_q = nn.Parameter(torch.zeros(width, rank, device=device))
        self.B_v = nn.Parameter(torch.zeros(width, rank, device=device))

    def forward(self, weight: Tensor) -> Tensor:
        dq = (self.B_q @ self.A_q) * self.scaling
        dv = (self.B_v @ self.A_v) * self.scaling
        zero = torch.zeros_like(dq)
        return weight + torch.cat([dq, zero, dv]).to(weight.dtype)


def _fused_qkv(block: nn.Module) -> tuple[nn.Module, str]:
    attn = getattr(block, "attn", None)
    if isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim:
        return attn, "in_proj_weight"
    qkv = getattr(attn, "qkv", None)  # timm Attention
    if isinstance(qkv, nn.Linear):
        return qkv, "weight"
    raise UserError(f"LoRA: block {type(block).__name__} has no fused qkv projection this LoRA knows")


def apply(backbone, cfg, generator: torch.Generator | None, peft: str = "lora") -> list[nn.Parameter]:
    rank, alpha = int(getattr(cfg, "lora_rank", 16)), float(getattr(cfg, "lora_alpha", 16.0))
    params: list[nn.Parameter] = []
    for block in blocks(backbone):
        module, name = _fused_qkv(block)
        w = getattr(module, name)
        lora = LoRAQV(w.shape[1], rank, alpha, generator, device=w.device)
        parametrize.register_parametrization(module, name, lora, unsafe=True)
        params += [lora.A_q, lora.B_q, lora.A_v, lora.B_v]
    return params
