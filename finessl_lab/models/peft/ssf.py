"""SSF (scale and shift features), ViT and CNN: a per-channel scale (init 1) and shift (init 0) after every
BatchNorm (CNN; before the activation of timm's BatchNormAct2d) or every LayerNorm / Linear / attention output
(ViT), applied with forward hooks; the modules live in ``backbone.peft_modules``.

SSF on an ``nn.MultiheadAttention`` scales the attention output (its ``out_proj`` Linear is bypassed by
PyTorch's fused attention, so no hook is put there); the fused qkv projection gets no SSF.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

FAMILIES = ("vit", "cnn")


class ScaleShift(nn.Module):
    """SSF: ``x * scale + shift`` over one channel dimension (1 for NCHW maps, -1 for token features)."""

    def __init__(self, channels: int, channel_dim: int, device: torch.device | None = None):
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.ones(channels, device=device))
        self.shift = nn.Parameter(torch.zeros(channels, device=device))

    def forward(self, x: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype)

    def output_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):  # nn.MultiheadAttention returns (attn_output, attn_weights)
            return (self(output[0]),) + output[1:]
        return self(output)

    def input_hook(self, module: nn.Module, args: tuple) -> tuple:
        return (self(args[0]),) + tuple(args[1:])

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}, channel_dim={self.channel_dim}"


def _ssf_key(name: str) -> str:
    return name.replace(".", "__") or "root"


def apply(backbone, cfg=None, generator=None, peft: str = "ssf") -> list[nn.Parameter]:
    root = backbone.peft_root
    device = next(root.parameters()).device
    params: list[nn.Parameter] = []
    if backbone.family == "cnn":
        for name, m in root.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                ssf = ScaleShift(m.num_features, channel_dim=1, device=device)
                act = getattr(m, "act", None)
                if isinstance(act, nn.Module):  # timm BatchNormAct2d: BN -> act inside one module; SSF before act
                    act.register_forward_pre_hook(ssf.input_hook)
                else:
                    m.register_forward_hook(ssf.output_hook)
                backbone.peft_modules[_ssf_key(name)] = ssf
                params += [ssf.scale, ssf.shift]
        return params
    fused_out = {id(m.out_proj) for m in root.modules() if isinstance(m, nn.MultiheadAttention)}
    for name, m in root.named_modules():
        if isinstance(m, nn.LayerNorm) and m.normalized_shape:
            channels = m.normalized_shape[-1]
        elif isinstance(m, nn.Linear) and id(m) not in fused_out:
            channels = m.out_features
        elif isinstance(m, nn.MultiheadAttention):
            channels = m.embed_dim
        else:
            continue
        ssf = ScaleShift(channels, channel_dim=-1, device=device)
        m.register_forward_hook(ssf.output_hook)
        backbone.peft_modules[_ssf_key(name)] = ssf
        params += [ssf.scale, ssf.shift]
    return params
