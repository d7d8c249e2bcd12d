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
RNG, so :func:`~finessl_lab.data.transforms.seeded` makes a view a pure function of (image, seed).
"""
from __future__ import annotations

from typing import Callable

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


def _signed(x: float) -> float:
    return -x if torch.rand(()).item() < 0.5 else x


def _enhance_factor(v: int) -> float:
    return _float(v, 0.9) + 0.05


def _affine(img: Image.Image, coeffs: tuple) -> Image.Image:
    """PIL affine with inverse-map ``coeffs`` (output (x, y) samples input (a x + b y + c, d x + e y + f)), nearest
    neighbour and black fill, as the official ``img.transform(img.size, PIL.Image.AFFINE, coeffs)``."""
    return img.transform(img.size, Image.Transform.AFFINE, coeffs)


def auto_contrast(img, v):
    return TF.autocontrast(img)


def brightness(img, v):
    return TF.adjust_brightness(img, _enhance_factor(v))


def color(img, v):
    return TF.adjust_saturation(img, _enhance_factor(v))


def contrast(img, v):
    return TF.adjust_contrast(img, _enhance_factor(v))


def equalize(img, v):
    return TF.equalize(img)


def identity(img, v):
    return img


def posterize(img, v):
    return TF.posterize(img, _int(v, 4) + 4)


def rotate(img, v):
    return TF.rotate(img, _signed(_int(v, 30)))


def sharpness(img, v):
    return TF.adjust_sharpness(img, _enhance_factor(v))


def shear_x(img, v):
    return _affine(img, (1, _signed(_float(v, 0.3)), 0, 0, 1, 0))


def shear_y(img, v):
    return _affine(img, (1, 0, 0, _signed(_float(v, 0.3)), 1, 0))


def solarize(img, v):
    return TF.solarize(img, 256 - _int(v, 256))


def translate_x(img, v):
    return _affine(img, (1, 0, int(_signed(_float(v, 0.3)) * img.size[0]), 0, 1, 0))


def translate_y(img, v):
    return _affine(img, (1, 0, 0, 0, 1, int(_signed(_float(v, 0.3)) * img.size[1])))


OPS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "AutoContrast": auto_contrast, "Brightness": brightness, "Color": color, "Contrast": contrast,
    "Equalize": equalize, "Identity": identity, "Posterize": posterize, "Rotate": rotate, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "Solarize": solarize, "TranslateX": translate_x, "TranslateY": translate_y,
}


def cutout_abs(img: Image.Image, side: int = CUTOUT_PX, fill: int = CUTOUT_FILL) -> Image.Image:
    """The official CutoutAbs: corner (x0, y0) = max(0, U(0, w) - side/2), box to min(w, x0 + side), drawn with
    PIL's inclusive rectangle (so up to side + 1 pixels wide), grey 127."""
    w, h = img.size
    cx, cy = (torch.rand(2, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)).tolist()
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)), int(min(h, y0 + side))
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
        for k in torch.randint(len(self.ops), (self.n,)).tolist():
            v = int(torch.randint(1, self.m, ()).item())
            if torch.rand(()).item() < 0.5:
                img = self.ops[k](img, v)
        return cutout_abs(img, self.cutout) if self.cutout > 0 else img

    def __repr__(self) -> str:
        return f"RandAugmentMC(n={self.n}, m={self.m}, cutout={self.cutout}px)"
