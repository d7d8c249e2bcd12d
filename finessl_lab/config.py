"""One typed configuration tree shared by the CLI, the notebooks' parameter cells and the library.

    Config
      data       DataConfig       what images, which split, which augmentation
      model      ModelConfig      backbone, pretrained weights, PEFT, heads
      algorithm  AlgorithmConfig  SSL algorithm + its own options (declared next to each algorithm)
      optim      OptimConfig      SGD, schedule, batch sizes
      run        RunConfig        budget, seed, device/precision, caching, checkpoints

Precedence, lowest to highest: dataclass defaults < preset < YAML file (--config) < dedicated CLI flags <
``--set section.key=value``. Every layer is validated the same way: unknown keys and out-of-range values raise
:class:`~finessl_lab.errors.UserError` naming the key and what is valid. Nothing is silently overridden.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .algorithms.finessl import FineSSLOptions
from .algorithms.baseline_options import (DebiasPLOptions, FlexMatchOptions, FPLOptions, FreeMatchOptions, GRIPOptions,
                                           IFPLOptions, PseudoLabelOptions, SoftMatchOptions, ULFineOptions)
from .errors import UserError, short_repr, suggest
from .options import describe_range, in_range, opt

DATASETS = ("mnist5k", "cifar10", "cifar100", "food101", "imagefolder", "imagenet", "semi_aves", "fashion_mnist",
            "fashion5k")
PEFTS = ("vpt_deep", "vpt_shallow", "vpt_last", "lora", "adapter", "adaptformer", "bn", "bitfit", "ssf", "last_k",
         "full", "linear")


@dataclass
class DataConfig:
    dataset: str = opt("cifar100", choices=DATASETS, help="dataset name")
    root: str = opt("", help="dataset directory ('' = <cache_dir>/datasets); torchvision downloads go here")
    download: bool = opt(True, help="let torchvision download CIFAR / Food-101 into root when missing")
    labels_per_class: int = opt(4, lo=1, help="N labeled images per class")
    val_per_class: int = opt(0, lo=0, help="held-out validation images per class taken from the unlabeled pool")
    include_labeled_in_unlabeled: bool = opt(True, help="labeled images also appear in the unlabeled set (official)")
    subsample_per_class: int = opt(0, lo=0, help="keep at most this many training images per class (0 = all)")
    image_size: int = opt(224, lo=8, hi=1024, help="crop size fed to the backbone")
    resize: int = opt(256, lo=8, hi=2048, help="resize (shorter side) before cropping")
    crop_padding: int = opt(28, lo=0, hi=512, help="padding of the weak RandomCrop")
    hflip: bool = opt(True, help="random horizontal flip in the weak view (off for digits)")
    randaugment_ops: int = opt(2, lo=0, hi=14, help="RandAugment ops of the strong view")
    randaugment_magnitude: int = opt(10, lo=0, hi=30, help="RandAugment magnitude of the strong view")
    cutout: float = opt(0.5, lo=0.0, hi=1.0, help="max Cutout side as a fraction of the image (0 = off)")
    normalize: str = opt("auto", choices=("auto", "backbone", "clip", "cifar", "imagenet", "inception"),
                         help="input normalisation; 'backbone' = the backbone's own, 'cifar' = official FineSSL "
                              "(CIFAR-10/100 statistics); auto = from fidelity (official: cifar for CIFAR, else imagenet)")
    num_workers: int = opt(2, lo=0, hi=64, help="DataLoader worker processes (image mode)")
    transport: str = opt("uint8", choices=("uint8", "float32"),
                         help="image mode: training views travel from the workers as uint8 and are normalised on "
                              "the device (same values), or as normalised float32 (4x the bytes)")
    views: str = opt("worker", choices=("worker", "device"),
                     help="image mode: training views made per image with PIL's ops by the loader (worker: the "
                          "official ops and draws) or batched in torch on the training device (device: the same "
                          "ops pixel for pixel, other random draws; no loader workers; data/device_views.py)")
    # fidelity items (README "Fidelity"): 'auto' = filled from the top-level `fidelity`
    strong_aug: str = opt("auto", choices=("auto", "randaugment_mc", "randaugment"),
                          help="strong view: randaugment_mc (official FixMatch RandAugmentMC + 16 px cutout) or "
                               "randaugment (torchvision RandAugment + random-size cutout)")
    test_view: str = opt("auto", choices=("auto", "resize", "center_crop"),
                         help="test view: resize (official Resize((s, s))) or center_crop (Resize + CenterCrop)")
    labeled_stream: str = opt("auto", choices=("auto", "replay", "fresh"),
                              help="replay = official cycle(DataLoader): each epoch replays its first pass; "
                                   "fresh = new batches every step")
    split_order: str = opt("auto", choices=("auto", "first", "seeded"),
                           help="labeled split: first N indices per class (official) or a seeded draw")
    # SSL settings beyond balanced (data/settings.py): long-tailed (Table 9) and open-set (Fig. 4)
    setting: str = opt("balanced", choices=("balanced", "longtail", "openset"),
                       help="balanced, longtail (labels_per_class = N_1 of the head class) or openset")
    imbalance_labeled: float = opt(10.0, lo=1.0, help="longtail: rho of the labeled set, N_k = N_1 * rho^(-k/(K-1))")
    imbalance_unlabeled: float = opt(0.0, lo=0.0, help="longtail: rho of the unlabeled set (0 = imbalance_labeled)")
    unlabeled_distribution: str = opt("consistent", choices=("consistent", "uniform", "reversed"),
                                      help="longtail: unlabeled class distribution relative to the labeled one")
    unlabeled_per_class: int = opt(0, lo=0, help="longtail: M_1, unlabeled images of the largest class (0 = as many as fit)")
    seen_classes: int = opt(0, lo=0, help="openset: the first K classes are seen (labeled); the rest are unlabeled OOD")
    # list-defined splits (data/datasets.py): Semi-Aves list files, ImageNet 1% / 10% subset lists
    label_list: str = opt("", help="semi_aves: labeled list l_train_val ('' = it, USB) or l_train (official FineSSL); "
                                   "imagenet: SimCLR subset list 1percent.txt / 10percent.txt (a path or a name under "
                                   "root or root/imagenet_subsets); '' = none")
    unlabeled_out: bool = opt(False, help="semi_aves: add the out-of-class u_train_out images to the unlabeled set, "
                                          "flagged OOD (Table 2 'in + out')")


@dataclass
class ModelConfig:
    backbone: str = opt("ViT-B-16", help="open_clip model name (e.g. ViT-B-16, RN50) or 'efficientnet_lite0'")
    pretrained: str = opt("openai", help="open_clip hub tag, a local weights file, 'embedded', or 'none' (random init: a test fixture only)")
    peft: str = opt("vpt_deep", choices=PEFTS, help="parameter-efficient fine-tuning method")
    vpt_tokens: int = opt(50, lo=1, hi=1000, help="VPT prompt tokens (per layer for vpt_deep)")
    lora_rank: int = opt(16, lo=1, hi=4096, help="LoRA rank r (on q and v)")
    lora_alpha: float = opt(16.0, lo=0.0, lo_open=True, help="LoRA scale = alpha / r")
    adapter_dim: int = opt(8, lo=1, hi=4096, help="Adapter / AdaptFormer bottleneck width")
    adaptformer_scale: float = opt(0.1, lo=0.0, help="AdaptFormer output scale s")
    tune_blocks: int = opt(1, lo=1, hi=1000, help="last_k: number of last blocks (ViT resblocks / CNN stages) tuned")
    lp_steps: int = opt(0, lo=0, help="LP-FT: steps of linear probing (backbone frozen) before the PEFT parameters train")
    head_init: str = opt("auto", choices=("auto", "random", "text", "class_mean", "prototype"),
                         help="cosine-head init: random = unit-norm uniform rows (official), text, class_mean, "
                              "prototype = text if the backbone has a text tower else class means; auto = from fidelity")
    prompt_template: str = opt("a photo of a {}.", help="text prompt for text-initialised heads")
    logit_scale: float = opt(1 / 0.07, lo=0.0, lo_open=True, help="initial cosine-head scale")
    learn_scale: bool = opt(True, help="learn the cosine-head scale")
    scale_param: str = opt("auto", choices=("auto", "direct", "log"),
                           help="cosine-head scale learned directly (official) or as log s; auto = from fidelity")


@dataclass
class AlgorithmConfig:
    name: str = opt("finessl", help="registered algorithm: supervised, pseudolabel, fixmatch, flexmatch, freematch, softmatch, debiaspl, finessl, fpl, ifpl, grip, ulfine")
    threshold: float = opt(0.7, lo=0.0, hi=1.0, help="confidence threshold for pseudo-label masks (paper: 0.7 for all)")
    unlabeled_weight: float = opt(1.0, lo=0.0, help="weight of the unlabeled loss of the baselines")
    finessl: FineSSLOptions = field(default_factory=FineSSLOptions)
    pseudolabel: PseudoLabelOptions = field(default_factory=PseudoLabelOptions)
    flexmatch: FlexMatchOptions = field(default_factory=FlexMatchOptions)
    freematch: FreeMatchOptions = field(default_factory=FreeMatchOptions)
    softmatch: SoftMatchOptions = field(default_factory=SoftMatchOptions)
    debiaspl: DebiasPLOptions = field(default_factory=DebiasPLOptions)
    fpl: FPLOptions = field(default_factory=FPLOptions)
    ifpl: IFPLOptions = field(default_factory=IFPLOptions)
    grip: GRIPOptions = field(default_factory=GRIPOptions)
    ulfine: ULFineOptions = field(default_factory=ULFineOptions)


@dataclass
class OptimConfig:
    lr: float = opt(0.03, lo=0.0, lo_open=True, help="SGD learning rate")
    backbone_lr: float = opt(0.0, lo=0.0, help="learning rate of the backbone's tuned parameters (PEFT / fine-tuned "
                                              "blocks); 0 = optim.lr. The heads always use optim.lr")
    momentum: float = opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    weight_decay: float = opt(5e-4, lo=0.0)
    nesterov: bool = opt(False)
    batch_size: int = opt(32, lo=1, hi=65536, help="labeled batch size")
    mu: int = opt(1, lo=1, hi=64, help="unlabeled batch = mu * batch_size")
    schedule: str = opt("cosine", choices=("cosine", "constant"))
    schedule_unit: str = opt("auto", choices=("auto", "step", "epoch"),
                             help="cosine stepped per step or per epoch (official code); auto = from fidelity")
    decay_scope: str = opt("auto", choices=("auto", "all", "matrices"),
                           help="weight decay on every tuned tensor (official) or only >= 2-d ones; auto = from fidelity")
    warmup_steps: int = opt(0, lo=0)


@dataclass
class RunConfig:
    epochs: int = opt(30, lo=1, hi=100000)
    steps_per_epoch: int = opt(500, lo=1, hi=10_000_000)
    max_steps: int = opt(0, lo=0, help="total step budget (0 = epochs * steps_per_epoch); the schedule spans it")
    seed: int = opt(1, lo=0, hi=2**31 - 1)
    device: str = opt("auto", help="auto, cpu, cuda, cuda:N or mps")
    precision: str = opt("auto", choices=("auto", "fp32", "bf16", "fp16", "fp16_pure"),
                         help="auto = bf16/fp16 autocast on CUDA, fp32 elsewhere; fp16_pure = official: model and "
                              "heads in half precision, no GradScaler (CUDA only)")
    cache_dir: str = opt("", help="splits / features / datasets cache ('' = $FINESSL_LAB_CACHE or ~/.cache/finessl_lab)")
    feature_cache: bool = opt(False, help="train head-level algorithms from cached frozen-backbone features")
    feature_views: int = opt(2, lo=1, hi=32, help="K weak and K strong cached views per image")
    view_seed: int = opt(0, lo=0, hi=2**31 - 1, help="seed of the cached augmented views (shared by all run seeds)")
    eval_batch_size: int = opt(256, lo=1)
    checkpoint_every: int = opt(0, lo=0, help="steps between checkpoints (0 = every epoch)")
    nan_policy: str = opt("stop", choices=("stop", "skip"), help="on a NaN/Inf loss: stop with an error, or skip the step and count it")
    progress: bool = opt(True, help="show progress bars")
    record: bool = opt(False, help="keep per-sample pseudo-label records, the class distribution and per-epoch ECE / "
                                   "AUROC / per-class accuracy as tables in <out>/records (finessl_lab.load_run)")
    record_every: int = opt(0, lo=0, help="per-sample records: every step of every k-th epoch and of the last "
                                          "(0 = the last epoch only)")
    tensorboard: bool = opt(False, help="also write TensorBoard logs to <out>/tensorboard (needs the tensorboard package)")


FIDELITIES = ("official", "clean")


@dataclass
class Config:
    fidelity: str = opt("official", choices=FIDELITIES,
                        help="official = the authors' code; clean = our fixes; fills every fidelity item left at auto")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict | None) -> "Config":
        cfg = cls()
        apply_dict(cfg, d or {})
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        cfg = cls()
        apply_dict(cfg, load_yaml(path))
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def set(self, dotted: str, value: Any) -> "Config":
        """Set ``section.key`` (or ``algorithm.finessl.key``) from a Python value or a CLI string."""
        set_dotted(self, dotted, value)
        return self

    def validate(self) -> "Config":
        validate(self)
        return self

    def resolved(self) -> "Config":
        """A copy with every fidelity item left at 'auto' filled from ``fidelity`` (explicit values stay)."""
        from .fidelity import resolve_fidelity

        return resolve_fidelity(self)

    @property
    def total_steps(self) -> int:
        return self.run.max_steps or self.run.epochs * self.run.steps_per_epoch


# -- generic machinery over the dataclass tree ------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _type_of(obj, f) -> Any:
    return _hints(type(obj))[f.name]


def _convert(key: str, value: Any, typ: Any, meta: dict | None = None) -> Any:
    """Convert a YAML/CLI value to the field type; a wrong type is a UserError naming key, value and what is valid."""
    name = getattr(typ, "__name__", str(typ))
    valid = _kind(typ, meta or {})
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise UserError(f"{key}={short_repr(value)} is not a boolean; valid: {valid}")
    if typ is int:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r} is not an integer; valid: {valid}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise UserError(f"{key}={short_repr(value)} is not an integer; valid: {valid}")
    if typ is float:
        if isinstance(value, bool):
            raise UserError(f"{key}={value!r} is not a number; valid: {valid}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise UserError(f"{key}={short_repr(value)} is not a number; valid: {valid}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{key}={short_repr(value)} is not a string; valid: {valid}")
    raise UserError(f"{key}: cannot set a value of type {name} this way")  # pragma: no cover


def _field_map(obj) -> dict:
    return {f.name: f for f in fields(obj)}


def _unknown(key: str, name: str, obj) -> UserError:
    valid = sorted(_field_map(obj))
    return UserError(f"unknown config key {key!r}{suggest(name, valid)}; valid keys here: {', '.join(valid)}")


def apply_dict(obj, d: dict, prefix: str = "") -> None:
    """Apply a nested dict onto a dataclass tree; unknown keys and wrong types are errors."""
    if not isinstance(d, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {type(d).__name__}; "
                        "valid: key: value pairs, e.g. optim: {lr: 0.03}")
    fmap = _field_map(obj)
    for name, value in d.items():
        key = f"{prefix}{name}"
        if name not in fmap:
            raise _unknown(key, str(name), obj)
        current = getattr(obj, name)
        if is_dataclass(current):
            apply_dict(current, value, key + ".")
        else:
            setattr(obj, name, _convert(key, value, _type_of(obj, fmap[name]), fmap[name].metadata))


def set_dotted(cfg, dotted: str, value: Any) -> None:
    if not isinstance(dotted, str):
        raise UserError(f"config key {short_repr(dotted)} has type {type(dotted).__name__}; valid: a string "
                        "section.key such as 'algorithm.threshold'")
    parts = dotted.strip().split(".")
    top = _field_map(cfg)
    if len(parts) == 1 and parts[0] in top and not is_dataclass(getattr(cfg, parts[0])):  # e.g. 'fidelity'
        setattr(cfg, parts[0], _convert(parts[0], value, _type_of(cfg, top[parts[0]]), top[parts[0]].metadata))
        return
    if len(parts) < 2 or not all(parts):
        sections = [n for n in _field_map(cfg) if is_dataclass(getattr(cfg, n))]
        leaves = [n for n in _field_map(cfg) if n not in sections]
        raise UserError(f"config key {dotted!r} must look like section.key (sections: {', '.join(sections)}) "
                        f"or be a top-level key ({', '.join(leaves)})")
    obj, prefix = cfg, ""
    for part in parts[:-1]:
        fmap = _field_map(obj)
        if part not in fmap or not is_dataclass(getattr(obj, part)):
            raise _unknown(prefix + part, part, obj)
        obj, prefix = getattr(obj, part), prefix + part + "."
    name = parts[-1]
    fmap = _field_map(obj)
    if name not in fmap or is_dataclass(getattr(obj, name)):
        raise _unknown(dotted, name, obj)
    setattr(obj, name, _convert(dotted, value, _type_of(obj, fmap[name]), fmap[name].metadata))


def parse_set(item: str) -> tuple[str, str]:
    """Split a ``--set key=value`` item."""
    if not isinstance(item, str):
        raise UserError(f"--set item {short_repr(item)} has type {type(item).__name__}; valid: a string key=value, "
                        "e.g. 'algorithm.threshold=0.8'")
    if "=" not in item:
        raise UserError(f"--set {item!r} must be key=value, e.g. --set algorithm.threshold=0.8")
    key, value = item.split("=", 1)
    return key.strip(), value


def iter_leaves(obj, prefix: str = ""):
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from iter_leaves(value, prefix + f.name + ".")
        else:
            yield prefix + f.name, value, f


def _kind(typ: Any, meta: dict) -> str:
    """What a value of this field must be, e.g. 'an integer with value >= 1'."""
    rng = f" with {describe_range(meta)}" if meta and (meta.get("lo") is not None or meta.get("hi") is not None) else ""
    if typ is bool:
        return "true or false"
    if typ is int:
        return "an integer" + rng
    if typ is float:
        return "a finite number" + rng
    if meta and meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    return "a string"


def _checked_leaf(key: str, value: Any, typ: Any, meta: dict) -> Any:
    """``value`` as the field's type (numpy scalars and integral floats are converted), or a UserError."""
    ok = None
    if typ is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            ok = bool(value)
    elif typ is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            ok = int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            ok = int(value)
    elif typ is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_":
            ok = float(value)
            if not math.isfinite(ok):
                raise UserError(f"{key}={value!r} is not a finite number; valid: {_kind(typ, meta)}")
    elif typ is str:
        if isinstance(value, str):
            ok = str(value)
    else:  # pragma: no cover  (every leaf of the tree is bool/int/float/str)
        return value
    if ok is None:
        raise UserError(f"{key}={short_repr(value)} has type {type(value).__name__}; valid: {_kind(typ, meta)}")
    return ok


def _check_types(obj, prefix: str = "") -> None:
    """Every section is its dataclass and every leaf has its field's type (converted in place where lossless)."""
    hints = _hints(type(obj))
    for f in fields(obj):
        key, value, typ = prefix + f.name, getattr(obj, f.name), hints[f.name]
        if is_dataclass(typ):
            if not isinstance(value, typ):
                raise UserError(f"config section {key!r} is {short_repr(value)} of type {type(value).__name__}; "
                                f"valid: a section object of type {typ.__name__} (set single keys, e.g. cfg.set('{key}.<key>', value), "
                                "or build the whole config with Config.from_dict)")
            _check_types(value, key + ".")
        else:
            setattr(obj, f.name, _checked_leaf(key, value, typ, f.metadata))


def validate(cfg: Config) -> None:
    """Check every value's type, its field's range / choices and the few cross-field rules."""
    if not isinstance(cfg, Config):
        raise UserError(f"config {short_repr(cfg)} has type {type(cfg).__name__}; valid: a finessl_lab.config.Config, "
                        "e.g. finessl_lab.presets.resolve('embedded') or Config.from_dict(d)")
    _check_types(cfg)
    for key, value, f in iter_leaves(cfg):
        meta = f.metadata
        if not meta:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise UserError(f"{key}={value!r} is not valid{suggest(value, meta['choices'])}; valid: {', '.join(meta['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value or not in_range(value, meta):
                raise UserError(f"{key}={value!r} is out of range; valid: {describe_range(meta)}")
    from .algorithms import REGISTRY

    if cfg.algorithm.name not in REGISTRY:
        names = sorted(REGISTRY)
        raise UserError(f"unknown algorithm {cfg.algorithm.name!r}{suggest(cfg.algorithm.name, names)}; valid: {', '.join(names)}")
    if cfg.run.feature_cache and cfg.model.peft != "linear" and not (
            cfg.model.backbone == "efficientnet_lite0" and cfg.model.peft in ("bn", "bitfit", "ssf", "full", "last_k")):
        raise UserError(f"run.feature_cache=true needs a frozen backbone (model.peft='linear'), got model.peft={cfg.model.peft!r}; "
                        "valid: model.peft=linear, efficientnet_lite0 with bn/bitfit/ssf/full/last_k on its top "
                        "model.tune_blocks blocks, or run.feature_cache=false to train the PEFT parameters on images")
    if cfg.data.image_size > cfg.data.resize:
        raise UserError(f"data.image_size={cfg.data.image_size} is larger than data.resize={cfg.data.resize}; valid: image_size <= resize")
    dev = cfg.run.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UserError(f"run.device={dev!r} is not valid; valid: auto, cpu, cuda, cuda:N, mps")
    if "{}" not in cfg.model.prompt_template:
        raise UserError(f"model.prompt_template={cfg.model.prompt_template!r} must contain '{{}}' for the class name; "
                        "valid: e.g. 'a photo of a {}.'")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass a YAML file such as a run's config.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections (data, model, algorithm, optim, run)")
    return data


def diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (for resume compatibility), compared after filling
    'auto' fidelity items, so a run's config.yaml (explicit values) matches the preset it came from."""
    return diff_leaves(leaves(a), leaves(b), ignore)


def leaves(cfg: Config, resolved: bool = False) -> dict:
    """{dotted key: value} of ``cfg`` after filling its 'auto' fidelity items (``resolved=True``: ``cfg`` is
    resolved already), what :func:`diff` compares; to compare one config with many, compute it once."""
    return {k: v for k, v, _ in iter_leaves(cfg if resolved else cfg.resolved())}


def diff_leaves(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """:func:`diff` of two configs from their :func:`leaves`."""
    return [k for k, v in b.items() if a.get(k) != v and not k.startswith(ignore)]


def get_dotted(cfg, dotted: str):
    """The value of ``section.key`` (or ``algorithm.finessl.key``) in a config tree."""
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def describe_diff(old: Config, new: Config, keys: list[str], limit: int = 5) -> str:
    """'key: old -> new; ...' for the first ``limit`` keys, then ' and N more'."""
    old, new = old.resolved(), new.resolved()
    details = "; ".join(f"{k}: {get_dotted(old, k)!r} -> {get_dotted(new, k)!r}" for k in keys[:limit])
    return details + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
