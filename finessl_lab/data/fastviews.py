"""Weak and strong views made a batch at a time, bit for bit those of the per-image transforms (issue 13).

``seeded_many(ViewTransforms.weak, imgs, seeds)`` runs, per image: seed torch's, Python's and NumPy's RNGs;
Resize; reflect-pad the whole image and crop it (two ``torch.randint`` draws); [flip: one ``torch.rand(1)``]; for
the strong view RandAugmentMC's draws and ops and the cutout; to a uint8 (or normalised fp32) tensor. About
130 us per 32 px image, most of it Python overhead around tiny images. Here, with the same draws in the same order
from one ``torch.Generator`` seeded per image with the same seed (the transforms draw only from torch's RNG):

* the resized, reflect-padded image is computed once per image and kept (:class:`PaddedImages`, bounded by
  bytes): a crop is then a slice of it, and a flip a reversed slice, written straight into the batch array;
* the strong view's RandAugmentMC ops run on PIL as before (same ops, same pixels), but the cutout is painted
  into the batch array and the batch becomes one tensor at the end (no per-image copies and conversions);
* fp32 views (data.transport=float32) are the uint8 batch normalised with :func:`normalize_uint8`, which gives
  the values of ``ToTensor`` + ``Normalize`` (tests/test_pipeline.py).

Only the transforms :func:`~finessl_lab.data.transforms.build_transforms` builds are made here (it attaches a
:class:`FastViews` to them); any other transform, image mode or size goes through the per-image path.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .randaugment_mc import CUTOUT_FILL, RandAugmentMC, cutout_box

#: Bytes of resized, padded images one :class:`PaddedImages` keeps (per process; 5,000 images at 32 px: 24 MB).
CACHE_BYTES = 512 << 20
_MODES = ("RGB", "L")


class PaddedImages:
    """``cache[i]``: image ``i`` of ``images`` after ``resize`` and reflect padding by ``pad`` (numpy's 'reflect',
    torchvision's for PIL), as a read-only uint8 array [H, W, C]; None when the image is not an RGB or L PIL image.
    Images are kept until ``max_bytes`` are held (then later ones are recomputed at each use)."""

    def __init__(self, images, resize, pad: int, max_bytes: int = CACHE_BYTES):
        self.images, self.resize, self.pad, self.max_bytes = images, resize, int(pad), int(max_bytes)
        self._store: dict[int, np.ndarray | None] = {}
        self._bytes = 0

    def __getstate__(self):  # DataLoader workers start with an empty cache (no copy of the parent's)
        return {**self.__dict__, "_store": {}, "_bytes": 0}

    def __getitem__(self, i: int) -> np.ndarray | None:
        i = int(i)
        got = self._store.get(i, False)
        if got is not False:
            return got
        img = self.images[i]
        if not isinstance(img, Image.Image) or img.mode not in _MODES:
            arr = None
        else:
            arr = np.asarray(self.resize(img))
            arr = arr.reshape(*arr.shape[:2], -1)
            p = self.pad
            if p:
                arr = np.pad(arr, ((p, p), (p, p), (0, 0)), "reflect")
            arr.flags.writeable = False
        if self._bytes + (0 if arr is None else arr.nbytes) <= self.max_bytes:
            self._store[i] = arr
            self._bytes += 0 if arr is None else arr.nbytes
        return arr


class FastViews:
    """The weak and (RandAugmentMC) strong views of :func:`build_transforms` for a batch of images.

    ``resize`` is the transforms' own ``T.Resize``; ``size`` the crop (th, tw); ``pad`` its reflect padding (0: a
    plain RandomCrop); ``strong`` the RandAugmentMC (None: the strong view is not made here); ``uint8`` whether
    the views stay uint8 or are normalised with ``mean`` / ``std``."""

    def __init__(self, resize, size: tuple[int, int], pad: int, hflip: bool, strong: RandAugmentMC | None,
                 uint8: bool, mean: Sequence[float], std: Sequence[float], test=None):
        self.resize, self.size, self.pad, self.hflip = resize, (int(size[0]), int(size[1])), int(pad), bool(hflip)
        self.strong, self.uint8, self.mean, self.std = strong, bool(uint8), tuple(mean), tuple(std)
        self.test = test  # the test view's geometric part (its ToTensor + Normalize done here on the batch)
        self._g = torch.Generator()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_g"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._g = torch.Generator()

    def cache(self, images, max_bytes: int = CACHE_BYTES) -> PaddedImages:
        """The padded-image cache these views read ``images`` from (one per image set)."""
        return PaddedImages(images, self.resize, self.pad, max_bytes)

    def _crop(self, arr: np.ndarray, g: torch.Generator) -> np.ndarray:
        """RandomCrop's draws (torchvision's get_params on the padded image) and the crop, a view of ``arr``."""
        th, tw = self.size
        h, w = arr.shape[:2]
        if h < th or w < tw:
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(h, w)}")
        if (h, w) == (th, tw):
            i = j = 0
        else:
            i = torch.randint(0, h - th + 1, size=(1,), generator=g).item()
            j = torch.randint(0, w - tw + 1, size=(1,), generator=g).item()
        crop = arr[i:i + th, j:j + tw]
        if self.hflip and torch.rand(1, generator=g) < 0.5:  # RandomHorizontalFlip(p=0.5)
            crop = crop[:, ::-1]
        return crop

    def _arrays(self, cache: PaddedImages, idx) -> list[np.ndarray] | None:
        arrs = [cache[i] for i in idx]
        if not arrs or any(a is None for a in arrs) or len({a.shape[2] for a in arrs}) != 1:
            return None
        if not self.uint8 and len(self.mean) not in (1, arrs[0].shape[2]):  # Normalize would raise: let it
            return None
        return arrs

    def _finish(self, out: np.ndarray, uint8: bool | None = None) -> Tensor:
        x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        if self.uint8 if uint8 is None else uint8:
            return x
        from .transforms import normalize_uint8
        return normalize_uint8(x, self.mean, self.std)

    def make(self, kind: str, cache: PaddedImages, idx, seeds) -> Tensor | None:
        """Views ``kind`` ('weak', 'strong' or 'test'; ``seeds`` unused for 'test') of images ``idx``."""
        if kind == "test":
            return self.test_views([cache.images[int(i)] for i in idx])
        return (self.weak if kind == "weak" else self.strong_views)(cache, idx, seeds)

    def test_views(self, imgs) -> Tensor | None:
        """The test views (always fp32 normalised) of PIL images ``imgs`` (None: use the per-image path)."""
        if self.test is None or not imgs or any(not isinstance(im, Image.Image) or im.mode not in _MODES
                                                for im in imgs):
            return None
        arrs = [np.asarray(self.test(im)) for im in imgs]
        arrs = [a.reshape(*a.shape[:2], -1) for a in arrs]
        if len({a.shape for a in arrs}) != 1 or len(self.mean) not in (1, arrs[0].shape[2]):
            return None
        return self._finish(np.stack(arrs), uint8=False)

    def weak(self, cache: PaddedImages, idx, seeds) -> Tensor | None:
        """The weak views of images ``idx`` seeded by ``seeds`` [B, C, th, tw] (None: use the per-image path)."""
        arrs = self._arrays(cache, idx)
        if arrs is None:
            return None
        g = self._g
        out = np.empty((len(arrs), *self.size, arrs[0].shape[2]), dtype=np.uint8)
        for b, (arr, seed) in enumerate(zip(arrs, seeds, strict=True)):
            g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
            out[b] = self._crop(arr, g)
        return self._finish(out)

    def strong_views(self, cache: PaddedImages, idx, seeds) -> Tensor | None:
        """The strong views of images ``idx`` seeded by ``seeds`` (None: use the per-image path)."""
        arrs = None if self.strong is None else self._arrays(cache, idx)
        if arrs is None:
            return None
        g, ra = self._g, self.strong
        c = arrs[0].shape[2]
        out = np.empty((len(arrs), *self.size, c), dtype=np.uint8)
        for b, (arr, seed) in enumerate(zip(arrs, seeds, strict=True)):
            g.manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
            crop = self._crop(arr, g)
            img = None  # RandAugmentMC.ops_only, draw for draw, making the PIL image only once an op applies
            for k in torch.randint(len(ra.ops), (ra.n,), generator=g).tolist():
                v = int(torch.randint(1, ra.m, (), generator=g).item())
                if torch.rand((), generator=g).item() < 0.5:
                    if img is None:
                        img = Image.fromarray(np.ascontiguousarray(crop[:, :, 0] if c == 1 else crop))
                    img = ra.ops[k](img, v, g)
            out[b] = crop if img is None else np.asarray(img).reshape(*self.size, c)
            if ra.cutout > 0:  # PIL's inclusive rectangle, clipped to the image
                x0, y0, x1, y1 = cutout_box(self.size[1], self.size[0], ra.cutout, g)
                out[b, y0:y1 + 1, x0:x1 + 1] = CUTOUT_FILL
        return self._finish(out)
