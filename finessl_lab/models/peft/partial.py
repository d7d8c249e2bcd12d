"""Full and partial fine-tuning.

* ``full`` (FFT): every parameter of the image tower (a CLIP text tower stays frozen). With
  ``head_init=text`` this is the paper's FFT-dagger (Table 10); with ``lp_steps`` > 0 it is LP-FT.
* ``last_k``: every parameter of the last ``tune_blocks`` blocks (ViT: resblocks, then ``ln_post``; CNN: the
  backbone's units, see ``Backbone.units``, counted from the top; for the embedded EfficientNet the top unit is
  the 1x1 head conv + BN). BatchNorm running statistics stay frozen (the backbone is always in eval mode).
"""
from __future__ import annotations

from torch import nn

from ...errors import UserError
from ._common import blocks

FAMILIES = ("vit", "cnn")


def apply(backbone, cfg, generator=None, peft: str = "full") -> list[nn.Parameter]:
    if peft == "full":
        return list(backbone.peft_root.parameters())
    k = int(getattr(cfg, "tune_blocks", 1))
    units = blocks(backbone)
    if not 1 <= k <= len(units):
        raise UserError(f"model.tune_blocks={k} is not valid for {backbone.name!r} with {len(units)} blocks; "
                        f"valid: 1 <= tune_blocks <= {len(units)}")
    params = [p for u in units[len(units) - k:] for p in u.parameters()]
    params += list(backbone.post_block_parameters())
    return params
