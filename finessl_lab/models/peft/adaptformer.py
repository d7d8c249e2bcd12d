"""AdaptFormer: a parallel bottleneck beside the MLP of every ViT block,
``mlp(x) + s * up(relu(down(x)))`` with x the MLP's input, s = ``adaptformer_scale`` (0.1), bottleneck
``adapter_dim`` (8), ``up`` zero-initialised (unchanged at init). Forward hook on ``block.mlp``."""
from __future__ import annotations

import torch
from torch import nn

from ._common import Bottleneck, blocks, mlp_of, ref_device

FAMILIES = ("vit",)


def apply(backbone, cfg, generator: torch.Generator | None, peft: str = "adaptformer") -> list[nn.Parameter]:
    dim, scale = int(getattr(cfg, "adapter_dim", 8)), float(getattr(cfg, "adaptformer_scale", 0.1))
    params: list[nn.Parameter] = []
    for i, block in enumerate(blocks(backbone)):
        ad = Bottleneck(backbone.width, dim, generator).to(ref_device(backbone))
        mlp_of(block).register_forward_hook(lambda m, args, out, ad=ad: out + scale * ad(args[0]))
        backbone.peft_modules[f"adaptformer_{i}"] = ad
        params += list(ad.parameters())
    return params
