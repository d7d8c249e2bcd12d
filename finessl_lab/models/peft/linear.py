"""Linear probe (LP): the backbone stays frozen, only the heads train. With ``model.lp_steps`` > 0 on another
PEFT the model probes first (LP-FT, see SSLModel)."""
from __future__ import annotations

from torch import nn

FAMILIES = ("vit", "cnn")


def apply(backbone, cfg, generator=None, peft: str = "linear") -> list[nn.Parameter]:
    return []
