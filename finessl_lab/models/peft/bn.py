"""BN-tuning (CNN): the affine weight and bias of every BatchNorm; running statistics stay frozen (eval mode)."""
from __future__ import annotations

from torch import nn

FAMILIES = ("cnn",)


def apply(backbone, cfg, generator=None, peft: str = "bn") -> list[nn.Parameter]:
    return [p for m in backbone.peft_root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            for p in (m.weight, m.bias)]
