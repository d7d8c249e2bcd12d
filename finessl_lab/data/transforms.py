"""Weak / strong / test views (FixMatch-style), with every random draw taken from torch's RNG.

weak   = Resize(resize) -> RandomCrop(image_size, padding, reflect) -> [RandomHorizontalFlip] -> ToTensor -> Normalize
strong = weak's geometric part -> strong ops -> ToTensor -> Normalize, the strong ops being
           strong_aug=randaugment_mc  the official FixMatch RandAugmentMC(ops, magnitude) + a fixed 16 px cutout
           strong_aug=randaugment     torchvision RandAugment(ops, magnitude) + [Cutout of random side <= cutout]
test   = test_view=resize       Resize((image_size, image_size)) of the whole image (official)
         test_view=center_crop  Resize(resize) -> CenterCrop(image_size)
         -> ToTensor -> Normalize

:func:`seeded` runs any transform with the RNGs forked and seeded, so a view is a pure function of
(image, seed); :func:`seeded_many` does the same for a whole batch, saving and restoring the RNGs once per batch
instead of once per image (same views, bit for bit); :func:`view_seed` derives such seeds from (seed, stream, step,
index).

Speed (issue 13), with views identical to torchvision's: :class:`ReflectRandomCrop` is ``RandomCrop(padding,
padding_mode='reflect')`` that gathers the crop's pixels by index instead of padding the whole image through numpy
(same random draws, same pixels). ``build_transforms(..., uint8=True)`` ends the views with ``PILToTensor``
(uint8 transport: a quarter of the bytes of fp32); :func:`normalize_uint8` then does ``ToTensor`` + ``Normalize``
on the device, with the same float operations in the same order (identical results on CPU). The views
:func:`build_transforms` makes also carry a :class:`~finessl_lab.data.fastviews.FastViews` (``batch_views``), which
ImageBatches and ImageViews use to make them a batch at a time, bit for bit the same (:func:`batch_maker`).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
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


class ReflectRandomCrop(T.RandomCrop):
    """``T.RandomCrop(size, padding, padding_mode='reflect')`` for PIL images without padding the whole image: the
    crop offset is drawn exactly as torchvision draws it (same ``torch.randint`` calls on the padded size), then
    the crop's rows and columns are gathered by reflected index. Same pixels as torchvision's; other inputs (tensors,
    other modes, padding as wide as the image) go through torchvision's own code."""

    def __init__(self, size, padding: int, tensor: bool = False):
        super().__init__(size, padding=int(padding), padding_mode="reflect")
        self.tensor = bool(tensor)  # True: return the crop as a uint8 [C, H, W] tensor (PILToTensor's), not PIL

    def forward(self, img):
        p = self.padding
        if not isinstance(img, Image.Image) or img.mode not in ("RGB", "L") or not isinstance(p, int) \
                or p >= min(img.size) or self.pad_if_needed:
            out = super().forward(img)
            return T.functional.pil_to_tensor(out) if self.tensor and isinstance(out, Image.Image) else out
        w, h = img.size
        th, tw = self.size
        hp, wp = h + 2 * p, w + 2 * p
        if hp < th or wp < tw:
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(hp, wp)}")
        if (hp, wp) == (th, tw):
            i = j = 0
        else:  # torchvision's RandomCrop.get_params, draw for draw
            i = torch.randint(0, hp - th + 1, size=(1,)).item()
            j = torch.randint(0, wp - tw + 1, size=(1,)).item()
        crop = np.asarray(img)[_reflected(i - p, th, h)][:, _reflected(j - p, tw, w)]
        if self.tensor:
            return torch.from_numpy(np.array(crop.reshape(th, tw, -1).transpose(2, 0, 1), order="C"))  # a copy
        return Image.fromarray(np.ascontiguousarray(crop))


@lru_cache(maxsize=4096)
def _reflected(start: int, length: int, n: int):
    """Rows (or columns) start .. start + length - 1 of an image of side n reflect-padded as numpy's 'reflect' pad
    (within one reflection: -n < index < 2n - 1), as a slice where no reflection is needed, else an index array."""
    if 0 <= start and start + length <= n:
        return slice(start, start + length)
    k = np.abs(np.arange(start, start + length))
    k = np.where(k > n - 1, 2 * (n - 1) - k, k)
    k.flags.writeable = False
    return k


class ToUint8:
    """PIL image -> uint8 [C, H, W] tensor (``PILToTensor``); a tensor passes through as it is."""

    def __call__(self, img):
        return img if isinstance(img, torch.Tensor) else T.functional.pil_to_tensor(img)

    def __repr__(self) -> str:
        return "ToUint8()"


def normalize_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``Normalize(mean, std)(ToTensor()(img))`` for a uint8 [..., C, H, W] tensor on any device: the same float32
    operations in the same order (x / 255, - mean, / std), so the same values as the fp32 views."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.to(torch.float32).div(255).sub_(m).div_(s)


@dataclass
class ViewTransforms:
    weak: Transform
    strong: Transform
    test: Transform
    mean: tuple | None = None   # the normalisation the views end with (or, uint8 views, leave to the device)
    std: tuple | None = None
    uint8: bool = False         # True: weak and strong views are uint8 tensors (normalize_uint8 on the device)
    fast: Any = None            # fastviews.FastViews making ``weak`` / ``strong`` a batch at a time (same views)
    on_device: Any = None       # device_views.DeviceViews: the training views are made on the device (data.views)

    def batch_maker(self, transform):
        """(FastViews, 'weak' | 'strong' | 'test') if ``transform`` is one of the views build_transforms made and it
        can be made a batch at a time (:mod:`~finessl_lab.data.fastviews`), else None (a replaced view never is)."""
        return batch_maker(transform)


def batch_maker(transform):
    """See :meth:`ViewTransforms.batch_maker`: the (FastViews, kind) build_transforms attached to ``transform``."""
    return getattr(transform, "batch_views", None)


STRONG_AUGS = ("randaugment_mc", "randaugment")
TEST_VIEWS = ("resize", "center_crop")


def build_transforms(cfg: Any, mean: Sequence[float], std: Sequence[float], uint8: bool = False,
                     device_views: bool = False) -> ViewTransforms:
    """Views for a DataConfig-like ``cfg`` (image_size, resize, crop_padding, hflip, randaugment_ops,
    randaugment_magnitude, cutout, strong_aug, test_view) normalised with ``mean``/``std``. ``strong_aug`` and
    ``test_view`` left at 'auto' (or absent) take the official forms, the default fidelity's. ``uint8=True``: the
    weak and strong views stop before ``ToTensor`` + ``Normalize`` and return uint8 tensors, to be normalised on
    the device with :func:`normalize_uint8` (the test view stays fp32 normalised). ``device_views=True``
    (data.views=device): ImageBatches gathers padded images and the device makes the training views
    (:class:`~finessl_lab.data.device_views.DeviceViews`, attached as ``on_device``)."""
    size, resize = int(cfg.image_size), int(cfg.resize)
    if resize < size:
        raise UserError(f"data.resize={resize} must be >= data.image_size={size} (resize first, then crop)")
    pad = int(cfg.crop_padding)

    def geometric_part(tensor: bool) -> list[Any]:  # tensor: the crop hands the weak uint8 view on as a tensor
        out = [T.Resize(resize), ReflectRandomCrop(size, pad, tensor) if pad > 0 else T.RandomCrop(size)]
        return out + [T.RandomHorizontalFlip()] if cfg.hflip else out  # (flips a tensor as it flips PIL)

    geometric = geometric_part(False)
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
    train_tail = [ToUint8()] if uint8 else tail
    test = [T.Resize((size, size))] if test_view == "resize" else [T.Resize(resize), T.CenterCrop(size)]
    views = ViewTransforms(
        weak=T.Compose(geometric_part(uint8) + train_tail),
        strong=T.Compose(geometric + strong_ops + train_tail),
        test=T.Compose(test + tail),
        mean=tuple(mean), std=tuple(std), uint8=bool(uint8),
    )
    from .fastviews import FastViews
    views.fast = FastViews(T.Resize(resize), (size, size), pad, bool(cfg.hflip),
                           strong_ops[0] if strong_aug == "randaugment_mc" else None, uint8, mean, std,
                           test=T.Compose(test))
    views.weak.batch_views, views.test.batch_views = (views.fast, "weak"), (views.fast, "test")
    if views.fast.strong is not None:
        views.strong.batch_views = (views.fast, "strong")
    if device_views:
        from .device_views import DeviceViews
        views.on_device = DeviceViews(T.Resize(resize), (size, size), pad, bool(cfg.hflip), views.fast.strong)
    return views


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


def _seed_all(seed: int) -> None:
    torch.random.default_generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)


def seeded_many(transform: Callable[[Any], Any], imgs: Sequence[Any], seeds: Sequence[int]) -> list:
    """``[seeded(transform, img, seed) for img, seed in zip(imgs, seeds)]``, bit for bit, with the RNGs saved and
    restored once for the batch (the per-image save/restore cost ~100 us, more than a small image's augmentation)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            out = []
            for img, seed in zip(imgs, seeds):
                _seed_all(int(seed))
                out.append(transform(img))
            return out
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def view_seed(*parts: int) -> int:
    """Mix integers (e.g. seed, stream, step, index) into one 63-bit seed; the same on every process and run."""
    text = ",".join(str(int(p)) for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"finessl-view").digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
