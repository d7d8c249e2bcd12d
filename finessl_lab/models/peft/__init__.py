"""Parameter-efficient fine-tuning: freeze a backbone, then create/enable only one method's parameters.

One module per method (``apply(backbone, cfg, generator, peft) -> list of parameters`` and ``FAMILIES``):

==============  ==========  ==================================================================================
PEFT            families    trainable parameters
==============  ==========  ==================================================================================
linear          vit, cnn    none (frozen backbone; only the heads train) -- LP
vpt_deep        vit         prompts [num_layers, n, width], a fresh set before every block           (vpt.py)
vpt_shallow     vit         prompts [1, n, width], before block 0 and carried through                (vpt.py)
vpt_last        vit         prompts [1, n, width], before the last block only                        (vpt.py)
lora            vit         low-rank updates of the q and v projections, B = 0 at init              (lora.py)
adapter         vit         sequential bottleneck after every MLP, zero-init up projection        (adapter.py)
adaptformer     vit         parallel scaled bottleneck beside every MLP, zero-init up        (adaptformer.py)
bn              cnn         affine weight + bias of every BatchNorm                                    (bn.py)
bitfit          vit, cnn    every bias of the image tower                                          (bitfit.py)
ssf             vit, cnn    per-channel scale / shift after every norm / linear                       (ssf.py)
last_k          vit, cnn    every parameter of the last ``tune_blocks`` blocks                    (partial.py)
full            vit, cnn    every parameter of the image tower -- FFT (FFT-dagger with text head init)
==============  ==========  ==================================================================================

LP-FT = ``model.lp_steps`` > 0 with any PEFT (usually ``full``): the first lp_steps training steps run the
backbone without gradients (SSLModel), then the PEFT parameters train too.

PEFT acts on the image tower only (``backbone.peft_root``); a CLIP text tower stays frozen and untouched.
The backbone always stays in eval mode (frozen BN statistics, no dropout): :class:`Backbone` overrides
``train()``, so a trainer calling ``model.train()`` cannot flip it.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn

from ...errors import UserError, check_choice
from . import adapter, adaptformer, bitfit, bn, linear, lora, partial, ssf, vpt
from .ssf import ScaleShift
from .vpt import vpt_init_bound

METHODS: dict[str, ModuleType] = {
    "vpt_deep": vpt, "vpt_shallow": vpt, "vpt_last": vpt, "lora": lora, "adapter": adapter,
    "adaptformer": adaptformer, "bn": bn, "bitfit": bitfit, "ssf": ssf, "last_k": partial, "full": partial,
    "linear": linear,
}
PEFTS = tuple(METHODS)
PEFTS_BY_FAMILY = {fam: tuple(n for n, m in METHODS.items() if fam in m.FAMILIES) for fam in ("vit", "cnn")}

__all__ = ["METHODS", "PEFTS", "PEFTS_BY_FAMILY", "ScaleShift", "apply_peft", "check_peft", "num_trainable",
           "vpt_init_bound"]


def check_peft(peft: str, family: str, backbone_name: str = "") -> str:
    """Return ``peft`` if it applies to a backbone of ``family``; otherwise a UserError naming the valid ones."""
    check_choice("PEFT method", peft, PEFTS)
    valid = PEFTS_BY_FAMILY[family]
    if peft not in valid:
        kind = "a ViT" if family == "vit" else "a CNN"
        what = f" {backbone_name!r}" if backbone_name else ""
        raise UserError(f"PEFT {peft!r} does not apply to {kind} backbone{what}; valid PEFTs for {kind}: {', '.join(valid)}")
    return peft


def apply_peft(backbone, cfg: Any, generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Freeze every backbone parameter, then create/enable the PEFT parameters of ``cfg.peft`` and return them.

    ``cfg`` is ModelConfig-like (``peft`` and that method's options); ``generator`` seeds new parameters.
    Can be applied once per backbone.
    """
    peft = check_peft(cfg.peft, backbone.family, getattr(backbone, "name", ""))
    if backbone.peft is not None:
        raise RuntimeError(f"PEFT {backbone.peft!r} is already applied to this backbone")
    backbone.requires_grad_(False)
    params = METHODS[peft].apply(backbone, cfg, generator, peft)
    if peft != "linear" and not params:
        raise UserError(f"PEFT {peft!r} found no parameters to tune in backbone {getattr(backbone, 'name', '')!r}")
    seen: set[int] = set()
    params = [p for p in params if not (id(p) in seen or seen.add(id(p)))]
    for p in params:
        p.requires_grad_(True)
    backbone.peft = peft
    backbone.peft_parameters = params
    backbone.eval()
    return params


def num_trainable(backbone) -> int:
    """Number of trainable PEFT parameters of a backbone (heads not included)."""
    return sum(p.numel() for p in backbone.peft_parameters)
