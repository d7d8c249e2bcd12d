"""BitFit: every bias of the image tower (ViT and CNN)."""
from __future__ import annotations

from torch import nn

FAMILIES = ("vit", "cnn")


def apply(backbone, cfg, generator=None, peft: str = "bitfit") -> list[nn.Parameter]:
    return [p for n, p in backbone.peft_root.named_parameters() if n.rsplit(".", 1)[-1].endswith("bias")]
