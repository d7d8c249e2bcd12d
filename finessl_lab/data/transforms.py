"""Weak / strong / test views (FixMatch-style), with every random draw taken from torch's RNG.

weak   = Resize(resize) -> RandomCrop(image_size, padding, reflect) -> [RandomHorizontalFlip] -> ToTensor -> Normalize
strong = weak's geometric part -> strong ops -> ToTensor -> Normalize, the strong ops being
           strong_aug=randaugment_mc  the official FixMatch RandAugmentMC(ops, magnitude) + a fixed 16 px cutout
           strong_aug=randaugment     torchvision RandAugment(ops, magnitude) + [Cutout of random side <= cutout]
test   = test_view=resize       Resize((image_size, image_size)) of the whole image (official)
         test_view=center_crop  Resize(resize) -> CenterCrop(image_size)
         -> ToTensor -> Normalize

:func:`seeded` runs any transform with the RNGs forked and seeded, so a view is a pure function of
(image, seed); :func:`view_seed` derives such seeds from (seed, stream, step, index).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import transforms as T

from ..errors import UserError
from .randaugment_mc import RandAugmentMC

Transform = Callable[[Image.Image], torch.Tensor]
CUTOUT_FILL = 127


class Cutout:
    """Paint a grey square of random side in (0, fraction * min(w, h)] at a random centre (clipped to the image).
    PIL in, PIL out; randomness from torch's global RNG."""

    def __init__(self, fraction: float, fill: int = CUTOUT_FILL):
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"cutout={fraction} must lie in [0, 1]")
        self.fraction, self.fill = float(fraction), int(fill)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        max_side = self.fraction * min(w, h)
        if max_side <= 0:
            return img
        u, cx, cy = (1.0 - torch.rand(3, dtype=torch.float64)).tolist()  # each in (0, 1]
        side = max(1.0, u * max_side)
        x, y = (1.0 - cx) * w, (1.0 - cy) * h  # centre in [0, w) x [0, h)
        box = (int(max(0.0, x - side / 2)), int(max(0.0, y - side / 2)),
               int(min(float(w), x + side / 2)), int(min(float(h), y + side / 2)))
        out = img.copy()
        fill: Any = self.fill if out.mode in ("L", "I", "F") else (self.fill,) * len(out.getbands())
        if box[2] > box[0] and box[3] > box[1]:
            ImageDraw.Draw(out).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill)
        return out

    def __repr__(self) -> str:
        return f"Cutout(fraction={self.fraction}, fill={self.fill})"


@dataclass
class ViewTransforms:
    weak: Transform
    strong: Transform
    test: Transform


STRONG_AUGS = ("randaugment_mc", "randaugment")
TEST_VIEWS = ("resize", "center_crop")


def build_transforms(cfg: Any, mean: Sequence[float], std: Sequence[float]) -> ViewTransforms:
    """Views for a DataConfig-like ``cfg`` (image_size, resize, crop_padding, hflip, randaugment_ops,
    randaugment_magnitude, cutout, strong_aug, test_view) normalised with ``mean``/``std``. ``strong_aug`` and
    ``test_view`` left at 'auto' (or absent) take the official forms, the default fidelity's."""
    size, resize = int(cfg.image_size), int(cfg.resize)
    if resize < size:
        raise UserError(f"data.resize={resize} must be >= data.image_size={size} (resize first, then crop)")
    pad = int(cfg.crop_padding)
    geometric: list[Any] = [T.Resize(resize), T.RandomCrop(size, padding=pad or None, padding_mode="reflect")]
    if cfg.hflip:
        geometric.append(T.RandomHorizontalFlip())
    strong_aug = _item(cfg, "strong_aug", STRONG_AUGS, "randaugment_mc")
    test_view = _item(cfg, "test_view", TEST_VIEWS, "resize")
    strong_ops: list[Any] = []
    if strong_aug == "randaugment_mc":
        strong_ops.append(RandAugmentMC(int(cfg.randaugment_ops), int(cfg.randaugment_magnitude)))
    else:
        if int(cfg.randaugment_ops) > 0:
            strong_ops.append(T.RandAugment(num_ops=int(cfg.randaugment_ops), magnitude=int(cfg.randaugment_magnitude)))
        if float(cfg.cutout) > 0:
            strong_ops.append(Cutout(float(cfg.cutout)))
    tail = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    test = [T.Resize((size, size))] if test_view == "resize" else [T.Resize(resize), T.CenterCrop(size)]
    return ViewTransforms(
        weak=T.Compose(geometric + tail),
        strong=T.Compose(geometric + strong_ops + tail),
        test=T.Compose(test + tail),
    )


def _item(cfg: Any, name: str, valid: Sequence[str], official: str) -> str:
    value = getattr(cfg, name, "auto")
    value = official if value == "auto" else value
    if value not in valid:
        raise UserError(f"data.{name}={value!r} is not valid; valid: auto, {', '.join(valid)}")
    return value


def seeded(transform: Callable[[Any], Any], img: Any, seed: int) -> Any:
    """``transform(img)`` with torch's CPU RNG, Python's ``random`` and NumPy's legacy global RNG seeded by ``seed``
    and restored afterwards: the result depends only on (transform, img, seed), never on the caller's RNG state."""
    seed = int(seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        random.seed(seed)
        np.random.seed(seed & 0xFFFF_FFFF)
        try:
            return transform(img)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def view_seed(*parts: int) -> int:
    """Mix integers (e.g. seed, stream, step, index) into one 63-bit seed; the same on every process and run."""
    text = ",".join(str(int(p)) for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"finessl-view").digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
