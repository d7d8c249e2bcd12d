"""Parameter-efficient fine-tuning: freeze a backbone, then create/enable only the PEFT parameters.

==============  ==========  ==================================================================================
PEFT            families    trainable parameters
==============  ==========  ==================================================================================
linear          vit, cnn    none (frozen backbone; only the heads train)
vpt_deep        vit         prompts [num_layers, n, width]: a fresh set appended after the patch tokens
                            before every block (replacing the previous block's prompt outputs)
vpt_shallow     vit         prompts [1, n, width]: appended before block 0 and carried through
bn              cnn         affine weight + bias of every BatchNorm
bitfit          vit, cnn    every bias of the image tower
ssf             vit, cnn    per-channel scale (init 1) and shift (init 0) after every BatchNorm (CNN) or
                            every LayerNorm / Linear / attention output (ViT), applied with forward hooks
==============  ==========  ==================================================================================

PEFT acts on the image tower only (``backbone.peft_root``); a CLIP text tower stays frozen and untouched.
The backbone always stays in eval mode (frozen BN statistics, no dropout): :class:`Backbone` overrides
``train()``, so a trainer calling ``model.train()`` cannot flip it.

SSF on an ``nn.MultiheadAttention`` scales the attention output (its ``out_proj`` Linear is bypassed by
PyTorch's fused attention, so no hook is put there); the fused qkv projection gets no SSF.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import UserError, check_choice

if TYPE_CHECKING:  # pragma: no cover
    from .backbones import Backbone

PEFTS = ("vpt_deep", "vpt_shallow", "bn", "bitfit", "ssf", "linear")
PEFTS_BY_FAMILY = {
    "vit": ("vpt_deep", "vpt_shallow", "bitfit", "ssf", "linear"),
    "cnn": ("bn", "bitfit", "ssf", "linear"),
}


def check_peft(peft: str, family: str, backbone_name: str = "") -> str:
    """Return ``peft`` if it applies to a backbone of ``family``; otherwise a UserError naming the valid ones."""
    check_choice("PEFT method", peft, PEFTS)
    valid = PEFTS_BY_FAMILY[family]
    if peft not in valid:
        kind = "a ViT" if family == "vit" else "a CNN"
        what = f" {backbone_name!r}" if backbone_name else ""
        raise UserError(f"PEFT {peft!r} does not apply to {kind} backbone{what}; valid PEFTs for {kind}: {', '.join(valid)}")
    return peft


def vpt_init_bound(patch_size: tuple[int, int], width: int) -> float:
    """VPT's uniform init bound v = sqrt(6 / (3 * patch_h * patch_w + width))."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + width))


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


def _add_ssf(backbone: "Backbone") -> list[nn.Parameter]:
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


def _add_vpt(backbone: "Backbone", deep: bool, n_tokens: int, generator: torch.Generator | None) -> list[nn.Parameter]:
    layers = backbone.num_layers if deep else 1
    bound = vpt_init_bound(backbone.patch_size, backbone.width)
    ref = next(backbone.peft_root.parameters())
    prompts = torch.empty(layers, n_tokens, backbone.width, dtype=torch.float32)
    prompts.uniform_(-bound, bound, generator=generator)
    backbone.set_prompts(nn.Parameter(prompts.to(ref.device)), deep=deep)
    return [backbone.prompts]


def apply_peft(backbone: "Backbone", cfg: Any, generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Freeze every backbone parameter, then create/enable the PEFT parameters of ``cfg.peft`` and return them.

    ``cfg`` is ModelConfig-like (uses ``peft`` and ``vpt_tokens``); ``generator`` seeds the VPT prompt init.
    Can be applied once per backbone.
    """
    peft = check_peft(cfg.peft, backbone.family, getattr(backbone, "name", ""))
    if backbone.peft is not None:
        raise RuntimeError(f"PEFT {backbone.peft!r} is already applied to this backbone")
    backbone.requires_grad_(False)
    root = backbone.peft_root
    if peft == "linear":
        params: list[nn.Parameter] = []
    elif peft in ("vpt_deep", "vpt_shallow"):
        n_tokens = int(cfg.vpt_tokens)
        if n_tokens < 1:
            raise UserError(f"model.vpt_tokens must be >= 1, got {n_tokens}")
        params = _add_vpt(backbone, deep=peft == "vpt_deep", n_tokens=n_tokens, generator=generator)
    elif peft == "bn":
        params = [p for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
                  for p in (m.weight, m.bias)]
    elif peft == "bitfit":
        params = [p for n, p in root.named_parameters() if n.rsplit(".", 1)[-1].endswith("bias")]
    else:  # ssf
        params = _add_ssf(backbone)
    if peft != "linear" and not params:
        raise UserError(f"PEFT {peft!r} found no parameters to tune in backbone {getattr(backbone, 'name', '')!r}")
    for p in params:
        p.requires_grad_(True)
    backbone.peft = peft
    backbone.peft_parameters = params
    backbone.eval()
    return params
