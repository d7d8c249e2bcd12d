"""VPT (visual prompt tuning), ViT only: learnable prompt tokens appended after the patch tokens.

* ``vpt_deep``: a fresh set of ``vpt_tokens`` prompts before every block (replacing the previous block's prompt
  outputs), prompts [num_layers, n, width];
* ``vpt_shallow``: one set before block 0, carried through all blocks, prompts [1, n, width];
* ``vpt_last``: one set inserted before the last block only (the official code's VPT-last), prompts [1, n, width].

Init: uniform(-v, v) with v = sqrt(6 / (3 * patch_h * patch_w + width)) (VPT), from the run's generator.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import UserError

FAMILIES = ("vit",)
MODES = {"vpt_deep": "deep", "vpt_shallow": "shallow", "vpt_last": "last"}


def vpt_init_bound(patch_size: tuple[int, int], width: int) -> float:
    """VPT's uniform init bound v = sqrt(6 / (3 * patch_h * patch_w + width))."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + width))


def apply(backbone, cfg, generator: torch.Generator | None, peft: str) -> list[nn.Parameter]:
    mode = MODES[peft]
    n_tokens = int(getattr(cfg, "vpt_tokens", 50))
    if n_tokens < 1:
        raise UserError(f"model.vpt_tokens must be >= 1, got {n_tokens}")
    layers = backbone.num_layers if mode == "deep" else 1
    bound = vpt_init_bound(backbone.patch_size, backbone.width)
    ref = next(backbone.peft_root.parameters())
    prompts = torch.empty(layers, n_tokens, backbone.width, dtype=torch.float32)
    prompts.uniform_(-bound, bound, generator=generator)
    backbone.set_prompts(nn.Parameter(prompts.to(ref.device)), deep=mode == "deep", mode=mode)
    return [backbone.prompts]
