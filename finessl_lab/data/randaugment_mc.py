"""FixMatch's RandAugmentMC, the strong augmentation of the official FineSSL code (``datasets/randaugment.py``).

Per image: ``n`` ops drawn WITH replacement from the 14 below; each is applied with probability 0.5 at a random
integer magnitude v in 1 .. m-1 (``np.random.randint(1, m)``: 1..9 for m = 10) out of 10; then a fixed 16-pixel
square cutout (the official ``CutoutAbs(img, int(32 * 0.5))``, sized for 32 px CIFAR but applied to 224 px crops).

    op            value at magnitude v (of 10)                       range for v = 1..9
    AutoContrast  -                                                  -
    Brightness    factor 0.9 v / 10 + 0.05                           0.14 .. 0.86  (never brighter)
    Color         factor 0.9 v / 10 + 0.05                           0.14 .. 0.86
    Contrast      factor 0.9 v / 10 + 0.05                           0.14 .. 0.86
    Equalize      -                                                  -
    Identity      -                                                  -
    Posterize     bits int(4 v / 10) + 4                             4 .. 7
    Rotate        +-int(30 v / 10) degrees                           3 .. 27
    Sharpness     factor 0.9 v / 10 + 0.05                           0.14 .. 0.86
    ShearX/Y      +-0.3 v / 10 (affine about the top-left corner)    0.03 .. 0.27
    Solarize      threshold 256 - int(256 v / 10)                    231 .. 26
    TranslateX/Y  +-int(0.3 v / 10 * side) pixels                    3 % .. 27 % of the side

Written for finessl_lab with torchvision's functional ops (photometric ops) and PIL affine transforms (shear and
translate about the top-left corner, exactly as the official code). Every random draw comes from torch's global
RNG, so :func:`~finessl_lab.data.transforms.seeded` makes a view a pure function of (image, seed); or, with
:meth:`RandAugmentMC.ops_only` and :func:`cutout_box`, from a given ``torch.Generator`` (the same draws in the same
order: :mod:`~finessl_lab.data.fastviews` seeds one generator per image instead of saving and seeding the RNGs).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import functional as TF

from ..errors import UserError

PARAMETER_MAX = 10
CUTOUT_PX = 16
CUTOUT_FILL = 127


def _float(v: int, max_v: float) -> float:
    return float(v) * max_v / PARAMETER_MAX


def _int(v: int, max_v: float) -> int:
    return int(v * max_v / PARAMETER_MAX)


def _signed(x: float, g: torch.Generator | None = None) -> float:
    return -x if torch.rand((), generator=g).item() < 0.5 else x


def _enhance_factor(v: int) -> float:
    return _float(v, 0.9) + 0.05


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    """PIL affine with inverse-map ``coeffs`` (output (x, y) samples input (a x + b y + c, d x + e y + f)), nearest
    neighbour and black fill, as the official ``img.transform(img.size, PIL.Image.AFFINE, coeffs)``."""
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


# AutoContrast, Equalize, Posterize and Solarize build their lookup tables in NumPy (or take them from a cache)
# instead of PIL's Python loops (~100 us a call at 32 px): the same tables, so the same pixels as torchvision's
# TF.autocontrast / equalize / posterize / solarize (tests/test_pipeline.py). Other modes go through torchvision.

def _point(img: Image.Image, lut: np.ndarray) -> Image.Image:
    """``img.point(lut)`` for an L or RGB image and a table of 256 (every band) or 256 per band, in NumPy: PIL
    clips the table to 0..255 and maps each band through its part (PIL's own ``point`` rounds the table in a
    Python loop first)."""
    a = np.asarray(img)
    t = np.clip(lut, 0, 255).astype(np.uint8)
    if len(t) == 256:
        out = t[a]
    else:  # one table per band
        out = t[a + np.arange(0, len(t), 256, dtype=np.intp)]
    return Image.fromarray(out, img.mode)


@lru_cache(maxsize=None)
def _posterize_lut(bits: int) -> np.ndarray:
    mask = ~(2 ** (8 - bits) - 1)
    return np.array([i & mask for i in range(256)])


@lru_cache(maxsize=None)
def _solarize_lut(threshold: int) -> np.ndarray:
    return np.array([i if i < threshold else 255 - i for i in range(256)])


_RAMP = np.arange(256)


def auto_contrast(img, v=0, g=None):
    if img.mode not in ("L", "RGB"):
        return TF.autocontrast(img)
    hist = np.asarray(img.histogram(), dtype=np.int64).reshape(-1, 256)
    lut = []
    for h in hist:  # PIL's ImageOps.autocontrast (cutoff 0): lo/hi = the first/last occupied level of each band
        nz = np.flatnonzero(h)
        lo, hi = (int(nz[0]), int(nz[-1])) if len(nz) else (255, 0)
        if hi <= lo:
            lut.append(_RAMP)
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            lut.append(np.clip((_RAMP * scale + offset).astype(np.int64), 0, 255))  # int() truncation, as PIL
    return _point(img, np.concatenate(lut))


def brightness(img, v, g=None):
    return TF.adjust_brightness(img, _enhance_factor(v))


def color(img, v, g=None):
    return TF.adjust_saturation(img, _enhance_factor(v))


def contrast(img, v, g=None):
    return TF.adjust_contrast(img, _enhance_factor(v))


def equalize(img, v=0, g=None):
    if img.mode not in ("L", "RGB"):
        return TF.equalize(img)
    hist = np.asarray(img.histogram(), dtype=np.int64).reshape(-1, 256)
    lut = []
    for h in hist:  # PIL's ImageOps.equalize, in integers
        nz = h[h > 0]
        step = (int(nz.sum()) - int(nz[-1])) // 255 if len(nz) > 1 else 0
        if not step:
            lut.append(_RAMP)
        else:
            lut.append((step // 2 + np.concatenate(([0], np.cumsum(h)[:-1]))) // step)
    return _point(img, np.concatenate(lut))


def identity(img, v, g=None):
    return img


def posterize(img, v, g=None):
    bits = _int(v, 4) + 4
    return _point(img, _posterize_lut(bits)) if img.mode in ("L", "RGB") else TF.posterize(img, bits)


def rotate(img, v, g=None):
    return TF.rotate(img, _signed(_int(v, 30), g))


def sharpness(img, v, g=None):
    return TF.adjust_sharpness(img, _enhance_factor(v))


def shear_x(img, v, g=None):
    return _affine(img, (1, _signed(_float(v, 0.3), g), 0, 0, 1, 0))


def shear_y(img, v, g=None):
    return _affine(img, (1, 0, 0, _signed(_float(v, 0.3), g), 1, 0))


def solarize(img, v, g=None):
    threshold = 256 - _int(v, 256)
    return _point(img, _solarize_lut(threshold)) if img.mode in ("L", "RGB") else TF.solarize(img, threshold)


def translate_x(img, v, g=None):
    return _affine(img, (1, 0, int(_signed(_float(v, 0.3), g) * img.size[0]), 0, 1, 0))


def translate_y(img, v, g=None):
    return _affine(img, (1, 0, 0, 0, 1, int(_signed(_float(v, 0.3), g) * img.size[1])))


#: name -> op(img, v, g=None); ``g``: the torch.Generator to draw signs from (None: torch's global RNG)
OPS: dict[str, Callable[..., Image.Image]] = {
    "AutoContrast": auto_contrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Equalize": equalize, "Identity": identity, "Posterize": posterize, "Rotate": rotate, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "Solarize": solarize, "TranslateX": translate_x, "TranslateY": translate_y,
}


def cutout_box(w: int, h: int, side: int = CUTOUT_PX, g: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """CutoutAbs's box (x0, y0, x1, y1), inclusive, drawn from ``g`` (None: torch's global RNG)."""
    u, v = torch.rand(2, dtype=torch.float64, generator=g).tolist()
    cx, cy = u * float(w), v * float(h)  # (the float64 product torch computed before, without a tensor)
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    return x0, y0, int(min(w, x0 + side)), int(min(h, y0 + side))


def cutout_abs(img: Image.Image, side: int = CUTOUT_PX, fill: int = CUTOUT_FILL) -> Image.Image:
    """The official CutoutAbs: corner (x0, y0) = max(0, U(0, w) - side/2), box to min(w, x0 + side), drawn with
    PIL's inclusive rectangle (so up to side + 1 pixels wide), grey 127."""
    x0, y0, x1, y1 = cutout_box(*img.size, side)
    out = img.copy()
    paint = fill if out.mode in ("L", "I", "F") else (fill,) * len(out.getbands())
    ImageDraw.Draw(out).rectangle((x0, y0, x1, y1), fill=paint)
    return out


class RandAugmentMC:
    """``RandAugmentMC(n, m)``: n ops with replacement, each with p = 0.5 at magnitude randint(1, m), then a fixed
    ``cutout``-pixel square (16 in the official code; 0 = none). PIL in, PIL out."""

    def __init__(self, n: int = 2, m: int = 10, cutout: int = CUTOUT_PX):
        if not 0 <= int(n) <= 14:
            raise UserError(f"RandAugmentMC n={n} (data.randaugment_ops) is out of range; valid: 0 <= n <= 14")
        if not 2 <= int(m) <= PARAMETER_MAX:
            raise UserError(f"RandAugmentMC m={m} (data.randaugment_magnitude) is out of range; valid: 2 <= m <= 10 "
                            "(magnitudes are drawn from 1 .. m-1)")
        self.n, self.m, self.cutout = int(n), int(m), int(cutout)
        self.ops = list(OPS.values())

    def __call__(self, img: Image.Image) -> Image.Image:
        img = self.ops_only(img)
        return cutout_abs(img, self.cutout) if self.cutout > 0 else img

    def ops_only(self, img: Image.Image, g: torch.Generator | None = None) -> Image.Image:
        """The n ops without the cutout, drawing from ``g`` (None: torch's global RNG); the cutout's box is then
        :func:`cutout_box` (``side=self.cutout``) from the same generator."""
        for k in torch.randint(len(self.ops), (self.n,), generator=g).tolist():
            v = int(torch.randint(1, self.m, (), generator=g).item())
            if torch.rand((), generator=g).item() < 0.5:
                img = self.ops[k](img, v) if g is None else self.ops[k](img, v, g)  # (user ops: op(img, v))
        return img

    def __repr__(self) -> str:
        return f"RandAugmentMC(n={self.n}, m={self.m}, cutout={self.cutout}px)"
