"""Adapter (Houlsby-style, sequential) after the MLP of every ViT block:
``mlp_out + up(relu(down(mlp_out)))``, bottleneck ``adapter_dim`` (default 8), ``up`` zero-initialised so the
block is unchanged at init. Applied with a forward hook on ``block.mlp``; the modules live in
``backbone.peft_modules``."""
from __future__ import annotations

import torch
from torch import nn

from ._common import Bottleneck, blocks, mlp_of, ref_device

FAMILIES = ("vit",)


def apply(backbone, cfg, generator: torch.Generator | None, peft: str = "adapter") -> list[nn.Parameter]:
    dim = int(getattr(cfg, "adapter_dim", 8))
    params: list[nn.Parameter] = []
    for i, block in enumerate(blocks(backbone)):
        ad = Bottleneck(backbone.width, dim, generator).to(ref_device(backbone))
        mlp_of(block).register_forward_hook(lambda m, args, out, ad=ad: out + ad(out))
        backbone.peft_modules[f"adapter_{i}"] = ad
        params += list(ad.parameters())
    return params
