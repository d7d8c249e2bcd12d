"""The `fidelity` switch: one top-level key that fills every fidelity item of the config at once.

Each item is also its own option (``data.strong_aug``, ``model.head_init``, ...). Precedence is simple: an item
left at ``'auto'`` takes the value that ``fidelity`` implies; any other value is the user's explicit choice and is
never changed. :func:`resolve_fidelity` returns a copy with every ``'auto'`` filled in; the trainer trains with that
copy and writes it to the run's ``config.yaml``, so a run records both the fidelity and every option it implied.

    fidelity=official   the authors' public code (Gank0078/FineSSL), quirks included
    fidelity=clean      finessl_lab's fixes

FineSSL's loss semantics (both strong views, masked aux mean, margins from the pace before the batch, only
confident predictions write a pace slot) are the official forms under both values; they are plain options of
``algorithm.finessl`` (see algorithms/finessl.py), not fidelity items.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

from .errors import check_choice

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

CIFAR = ("cifar10", "cifar100")


def _has_text_tower(cfg: "Config") -> bool:
    from .models.backbones import EFFICIENTNET

    return cfg.model.backbone != EFFICIENTNET  # every open_clip model is a CLIP with a text tower


# dotted key -> (official value, clean value); a value may depend on the rest of the config
ITEMS: dict[str, tuple[Callable[["Config"], str] | str, Callable[["Config"], str] | str]] = {
    "model.head_init": ("random", lambda c: "text" if _has_text_tower(c) else "class_mean"),
    "model.scale_param": ("direct", "log"),
    "optim.decay_scope": ("all", "matrices"),
    "optim.schedule_unit": ("epoch", "step"),
    "data.labeled_stream": ("replay", "fresh"),
    "data.strong_aug": ("randaugment_mc", "randaugment"),
    "data.test_view": ("resize", "center_crop"),
    "data.normalize": (lambda c: "cifar" if c.data.dataset in CIFAR else "imagenet", "backbone"),
    "data.split_order": ("first", "seeded"),
}


def implied(cfg: "Config", key: str, fidelity: str | None = None) -> str:
    """The value ``fidelity`` (default: ``cfg.fidelity``) implies for item ``key``."""
    fid = check_choice("fidelity", fidelity or cfg.fidelity, ("official", "clean"))
    value = ITEMS[key][0 if fid == "official" else 1]
    return value(cfg) if callable(value) else value


def resolve_fidelity(cfg: "Config") -> "Config":
    """A deep copy of ``cfg`` with every fidelity item left at 'auto' set to the value ``cfg.fidelity`` implies."""
    from .config import get_dotted, set_dotted

    out = copy.deepcopy(cfg)
    for key in ITEMS:
        if get_dotted(out, key) == "auto":
            set_dotted(out, key, implied(out, key))
    return out


def explicit_items(cfg: "Config") -> dict[str, str]:
    """Items the user set explicitly (not 'auto') that differ from what ``cfg.fidelity`` implies."""
    from .config import get_dotted

    out = {}
    for key in ITEMS:
        v = get_dotted(cfg, key)
        if v != "auto" and v != implied(cfg, key):
            out[key] = v
    return out
