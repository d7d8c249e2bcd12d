"""Training views made on the training device, a batch at a time, in torch (``data.views=device``; issue 13).

The default (``data.views=worker``) makes every weak and strong view on the host, image by image, with PIL's ops
(the official RandAugmentMC): ~8 ms of one core per 104-image batch at 32 px, which on 2 cores cannot hide behind
a ~12 ms training step. Here the host only gathers the resized, reflect-padded uint8 images (cached:
:class:`~finessl_lab.data.fastviews.PaddedImages`) into one tensor per image set and draws the random parameters;
the device makes the views with batched tensor ops when the trainer normalises the batch
(:meth:`~finessl_lab.data.batches.Batch.normalized`):

* weak view: random crop of the padded image (torchvision's RandomCrop offsets) + horizontal flip (p = 0.5);
* strong view: the same crop + flip, RandAugmentMC's ``n`` ops with replacement, each applied with p = 0.5 at a
  magnitude 1 .. m-1 and a random sign, then the 16 px grey cutout (PIL's inclusive rectangle);
* all views normalised (``ToTensor`` + ``Normalize``'s float operations, :func:`normalize_uint8`).

The ops reproduce PIL's (Pillow's C code) pixel for pixel: the lookup-table ops (AutoContrast, Equalize, Posterize,
Solarize) in integers; Brightness / Color / Contrast / Sharpness as Pillow's ``ImagingBlend`` (``in1 + alpha *
(in2 - in1)`` in float32, truncated) of Pillow's degenerate images (black; ITU-R 601 integer luma; the rounded mean
luma; the 3x3 SMOOTH filter in float32, in Pillow's order of summation, borders copied); Rotate / Shear / Translate
as Pillow's nearest-neighbour affine transform in 16.16 fixed point (``affine_fixed`` in ``Geometry.c``; the
integer translations of its scaling path give the same pixels), black fill; tests/test_device_views.py compares
each with the PIL op on random images. The views are NOT those of ``data.views=worker``: the random parameters are
drawn a batch at a time, from a ``torch.Generator`` seeded by (split seed, stream, step) (:func:`draw`), so they
are a pure function of (seed, step) (resume stays exact, any number of ranks sees the same global batch) but
different draws. Parameters are drawn on the host (CPU), so the views do not depend on the device either.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .fastviews import CACHE_BYTES, PaddedImages
from .randaugment_mc import CUTOUT_FILL, OPS, PARAMETER_MAX, RandAugmentMC

OP_NAMES = tuple(OPS)  # the op index RandAugmentMC draws -> name
LUT_OPS = ("AutoContrast", "Equalize", "Posterize", "Solarize")
BLEND_OPS = ("Brightness", "Color", "Contrast", "Sharpness")
AFFINE_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
#: images of one op slot are processed grouped in this order (then the ones whose op is not applied)
GROUP_ORDER = LUT_OPS + BLEND_OPS + AFFINE_OPS + ("Identity",)
_AFF_INDEX = np.array([AFFINE_OPS.index(name) if name in AFFINE_OPS else -1 for name in OP_NAMES])
_RANK = np.array([GROUP_ORDER.index(name) for name in OP_NAMES] + [len(GROUP_ORDER)], dtype=np.int64)

# columns of the parameter table (one int64 row per view)
SRC, TOP, LEFT, FLIP, CUT_X, CUT_Y = range(6)
SLOT0, SLOT_COLS = 6, 9  # per op slot: op (-1: not applied), magnitude, 6 fixed-point affine coefficients, order
OP, MAG, AFF, ORDER = 0, 1, 2, 8


def _factor(v: int) -> float:
    return float(v) * 0.9 / PARAMETER_MAX + 0.05  # randaugment_mc._enhance_factor


def _fix(v: float) -> int:
    return math.floor(v * 65536.0 + 0.5)  # Geometry.c FIX (FLOOR of v * 65536 + 0.5)


def _rotation_matrix(angle: float, w: int, h: int) -> list[float]:
    """Pillow's ``Image.rotate`` inverse matrix (centre (w/2, h/2), no translation, no expand)."""
    angle = angle % 360.0
    center = (w / 2, h / 2)
    angle = -math.radians(angle)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    a, b, c, d, e, f = m
    m[2], m[5] = a * -center[0] + b * -center[1] + c, d * -center[0] + e * -center[1] + f
    m[2] += center[0]
    m[5] += center[1]
    return m


@lru_cache(maxsize=64)
def affine_table(w: int, h: int) -> np.ndarray:
    """[5 affine ops, 10 magnitudes, 2 signs (0: +, 1: -), 6] int64: Pillow's 16.16 fixed-point coefficients
    (a0, a1, a2', a3, a4, a5') of each affine op of RandAugmentMC on a w x h image (``affine_fixed``: a2' and a5'
    already hold the half-pixel offsets)."""
    out = np.zeros((len(AFFINE_OPS), PARAMETER_MAX, 2, 6), dtype=np.int64)
    for v in range(1, PARAMETER_MAX):
        for s, sign in enumerate((1.0, -1.0)):
            shear = sign * (float(v) * 0.3 / PARAMETER_MAX)
            for k, name in enumerate(AFFINE_OPS):
                if name == "Rotate":
                    a = _rotation_matrix(sign * int(v * 30 / PARAMETER_MAX), w, h)
                elif name == "ShearX":
                    a = [1, shear, 0, 0, 1, 0]
                elif name == "ShearY":
                    a = [1, 0, 0, shear, 1, 0]
                elif name == "TranslateX":
                    a = [1, 0, int(shear * w), 0, 1, 0]
                else:
                    a = [1, 0, 0, 0, 1, int(shear * h)]
                a = [float(x) for x in a]
                out[k, v, s] = (_fix(a[0]), _fix(a[1]), _fix(a[2] + a[0] * 0.5 + a[1] * 0.5),
                                _fix(a[3]), _fix(a[4]), _fix(a[5] + a[3] * 0.5 + a[4] * 0.5))
    out.flags.writeable = False
    return out


def view_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """The generator the parameters of one view stream at one step are drawn from (a pure function of them)."""
    from .transforms import view_seed
    return torch.Generator().manual_seed(view_seed(seed, stream, step) & 0xFFFF_FFFF_FFFF_FFFF)


@dataclass
class Draws:
    """The random draws of ``n`` views (rows of the global batch), before they are turned into parameters."""
    crop: Tensor             # [n, 2] float64 in [0, 1): crop top / left as a fraction of the possible offsets
    flip: Tensor             # [n] bool
    ops: Tensor | None = None     # [n, slots] int64 op index (RandAugmentMC order)
    mags: Tensor | None = None    # [n, slots] int64 in 1 .. m-1
    apply: Tensor | None = None   # [n, slots] bool (p = 0.5)
    negative: Tensor | None = None  # [n, slots] bool: the signed ops take -value (p = 0.5)
    cutout: Tensor | None = None  # [n, 2] float64 in [0, 1): the cutout centre as a fraction of the width / height


def draw(g: torch.Generator, n: int, strong: RandAugmentMC | None) -> Draws:
    """All random draws of ``n`` views from ``g``, vectorised, in a fixed order."""
    d = Draws(crop=torch.rand(n, 2, dtype=torch.float64, generator=g), flip=torch.rand(n, generator=g) < 0.5)
    if strong is not None:
        k = strong.n
        d.ops = torch.randint(len(OP_NAMES), (n, k), generator=g)
        d.mags = torch.randint(1, strong.m, (n, k), generator=g)
        d.apply = torch.rand(n, k, generator=g) < 0.5
        d.negative = torch.rand(n, k, generator=g) < 0.5
        d.cutout = torch.rand(n, 2, dtype=torch.float64, generator=g)
    return d


class DeviceViews:
    """Makes the training views on the device (see the module docstring). ``resize`` is the transforms' own
    ``T.Resize``; ``size`` the crop (th, tw); ``pad`` its reflect padding; ``strong`` the RandAugmentMC."""

    def __init__(self, resize, size: tuple[int, int], pad: int, hflip: bool, strong: RandAugmentMC):
        if not isinstance(strong, RandAugmentMC) or list(strong.ops) != list(OPS.values()):
            raise UserError("data.views=device makes RandAugmentMC strong views only; set "
                            "data.strong_aug=randaugment_mc or data.views=worker")
        self.resize, self.size, self.pad, self.hflip = resize, (int(size[0]), int(size[1])), int(pad), bool(hflip)
        self.strong = strong

    def cache(self, images, max_bytes: int = CACHE_BYTES) -> "PaddedBank":
        return PaddedBank(images, self.resize, self.pad, max_bytes)

    # -- host side: gather the padded images, draw the parameters ---------------------------------------------
    def gather(self, cache: PaddedImages, idx) -> tuple[Tensor, np.ndarray]:
        """The padded images ``idx`` as one uint8 [N, C, H, W] tensor (zero-filled to the largest) and their
        sizes [N, 2] (h, w)."""
        banked = cache.take(idx) if isinstance(cache, PaddedBank) else None
        if banked is not None:
            th, tw = self.size
            h, w = banked.shape[2:]
            if h < th or w < tw:
                raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(h, w)}")
            return banked, np.tile(np.array([h, w], dtype=np.int64), (len(banked), 1))
        arrs = [cache[i] for i in idx]
        if any(a is None for a in arrs):
            raise UserError("data.views=device needs RGB or L (grey) PIL images; use data.views=worker")
        if len({a.shape[2] for a in arrs}) != 1:
            raise UserError("data.views=device needs images of one mode per batch (all RGB or all L)")
        sizes = np.array([a.shape[:2] for a in arrs], dtype=np.int64).reshape(-1, 2)
        th, tw = self.size
        if len(arrs) and (sizes[:, 0].min() < th or sizes[:, 1].min() < tw):
            h, w = sizes[np.argmin(sizes[:, 0] * sizes[:, 1])]
            raise ValueError(f"Required crop size {(th, tw)} is larger than input image size {(int(h), int(w))}")
        if len({a.shape for a in arrs}) == 1:
            out = np.stack(arrs)
        else:
            out = np.zeros((len(arrs), *sizes.max(0), arrs[0].shape[2]), dtype=np.uint8)
            for k, a in enumerate(arrs):
                out[k, :a.shape[0], :a.shape[1]] = a
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), sizes

    def params(self, d: Draws, rows: slice, sizes: np.ndarray, src: np.ndarray) -> np.ndarray:
        """The int64 parameter table of views ``rows`` of the drawn global batch ``d`` (their images' padded
        ``sizes`` and rows ``src`` in the gathered tensor)."""
        th, tw = self.size
        n = len(src)
        slots = self.strong.n if d.ops is not None else 0
        p = np.zeros((n, SLOT0 + SLOT_COLS * self.strong.n), dtype=np.int64)  # (weak views: slots unused)
        p[:, SRC] = src
        crop = d.crop[rows].numpy()
        # torchvision's RandomCrop offset: uniform on 0 .. size - crop (one offset when the sizes are equal)
        p[:, TOP] = np.floor(crop[:, 0] * (sizes[:, 0] - th + 1))
        p[:, LEFT] = np.floor(crop[:, 1] * (sizes[:, 1] - tw + 1))
        p[:, FLIP] = d.flip[rows].numpy() & self.hflip
        p[:, CUT_X] = p[:, CUT_Y] = -1
        if not slots:
            return p
        side = self.strong.cutout
        if side > 0:  # randaugment_mc.cutout_box: corner = max(0, U * side_of_image - side / 2), truncated
            c = d.cutout[rows].numpy()
            p[:, CUT_X] = np.maximum(0.0, c[:, 0] * float(tw) - side / 2.0).astype(np.int64)
            p[:, CUT_Y] = np.maximum(0.0, c[:, 1] * float(th) - side / 2.0).astype(np.int64)
        ops, mags = d.ops[rows].numpy(), d.mags[rows].numpy()
        applied, neg = d.apply[rows].numpy(), d.negative[rows].numpy().astype(np.int64)
        table = affine_table(tw, th)
        for s in range(slots):
            base = SLOT0 + SLOT_COLS * s
            op = np.where(applied[:, s], ops[:, s], -1)
            p[:, base + OP], p[:, base + MAG] = op, mags[:, s]
            k = np.where(op >= 0, _AFF_INDEX[np.maximum(op, 0)], -1)
            is_aff = k >= 0
            p[is_aff, base + AFF:base + AFF + 6] = table[k[is_aff], mags[is_aff, s], neg[is_aff, s]]
        return p

    def pending(self, parts: list[np.ndarray], strong_rows: int) -> "PendingViews":
        """The :class:`PendingViews` of the parameter tables ``parts`` (stacked in order: labeled weak, unlabeled
        weak, strong 1, strong 2; the last ``strong_rows`` rows are the strong views; SRC: rows of the one gathered
        image tensor)."""
        p = np.concatenate(parts) if parts else np.zeros((0, SLOT0), dtype=np.int64)
        slots = self.strong.n
        counts = []
        if strong_rows:
            sp = p[len(p) - strong_rows:]
            for s in range(slots):
                base = SLOT0 + SLOT_COLS * s
                rank = _RANK[sp[:, base + OP]]  # op -1 (not applied) -> the last rank
                order = np.argsort(rank, kind="stable")
                sp[:, base + ORDER] = order
                counts.append(np.bincount(rank, minlength=len(GROUP_ORDER) + 1).tolist())
        return PendingViews(torch.from_numpy(np.ascontiguousarray(p)), self.size, strong_rows, counts,
                            self.strong.cutout)


class PaddedBank:
    """The resized, padded images of one image set as ONE uint8 tensor [N, C, H, W], filled image by image on
    first use, so that gathering a batch is one ``index_select`` (stacking ~100 small arrays and permuting them
    cost ~0.4 ms a batch at 32 px). Used while every image has the same padded shape and the tensor fits in
    ``max_bytes``; otherwise (images of several sizes or modes, a set too large) ``take`` returns None and
    :meth:`DeviceViews.gather` stacks the images of :class:`~finessl_lab.data.fastviews.PaddedImages` as before."""

    def __init__(self, images, resize, pad: int, max_bytes: int = CACHE_BYTES):
        self.images, self.resize, self.max_bytes = images, resize, int(max_bytes)
        self.padded = PaddedImages(images, resize, pad, max_bytes=0)  # computes; the bank keeps the pixels
        self._bank: Tensor | None = None
        self._filled: np.ndarray | None = None
        self._off = False

    def __getstate__(self):  # (DataLoader workers start without the parent's bank)
        return {**self.__dict__, "_bank": None, "_filled": None}

    def __getitem__(self, i: int) -> np.ndarray | None:
        return self.padded[i]

    def _give_up(self) -> None:
        self._off, self._bank, self._filled = True, None, None
        self.padded.max_bytes = self.max_bytes  # the stacking path keeps its arrays instead

    def take(self, idx) -> Tensor | None:
        """Images ``idx`` as a uint8 [len(idx), C, H, W] tensor, or None when the bank is not used."""
        if self._off:
            return None
        idx = np.asarray(idx, dtype=np.int64)
        if self._bank is None:
            first = self.padded[int(idx[0])] if len(idx) else None
            if first is None or len(self.images) * first.nbytes > self.max_bytes:
                self._give_up()
                return None
            h, w, c = first.shape
            self._bank = torch.empty((len(self.images), c, h, w), dtype=torch.uint8)
            self._filled = np.zeros(len(self.images), dtype=bool)
        missing = idx[~self._filled[idx]]
        if len(missing):
            shape = (self._bank.shape[2], self._bank.shape[3], self._bank.shape[1])
            for i in np.unique(missing).tolist():
                a = self.padded[i]
                if a is None or a.shape != shape:
                    self._give_up()
                    return None
                self._bank.numpy()[i] = a.transpose(2, 0, 1)  # (numpy copies from the read-only cached array)
                self._filled[i] = True
        return self._bank.index_select(0, torch.from_numpy(idx))


class PendingViews:
    """A batch's views to make on the device: the parameter table (one int64 row per view) and what the device
    needs without reading it back (image sizes, group counts: Python ints, so no host-device sync)."""

    def __init__(self, params: Tensor, size: tuple[int, int], strong_rows: int, counts: list[list[int]],
                 cutout: int):
        self.params, self.size, self.strong_rows, self.counts, self.cutout = params, size, strong_rows, counts, cutout

    @property
    def device(self) -> torch.device:
        return self.params.device

    @property
    def is_cpu(self) -> bool:  # (the trainer asks a batch's fields where they lie the way it asks tensors)
        return self.params.is_cpu

    def to(self, device, non_blocking: bool = False) -> "PendingViews":
        return PendingViews(self.params.to(device, non_blocking=non_blocking), self.size, self.strong_rows,
                            self.counts, self.cutout)

    def pin_memory(self, *args) -> "PendingViews":
        return PendingViews(self.params.pin_memory(*args), self.size, self.strong_rows, self.counts, self.cutout)

    def make(self, images: Tensor) -> Tensor:
        """The uint8 views [rows, C, th, tw] (labeled weak, unlabeled weak, strong 1, strong 2, in the parameter
        table's row order) of the gathered padded ``images`` [N, C, H, W]."""
        p = self.params
        views = crop_flip(images, p, self.size)
        if self.strong_rows:
            k = len(views) - self.strong_rows
            strong = views[k:]  # a view: the ops write into it
            sp = p[k:]
            for s, counts in enumerate(self.counts):
                randaugment_slot(strong, sp, s, counts)
            if self.cutout > 0:
                strong.copy_(cutout(strong, sp[:, CUT_X], sp[:, CUT_Y], self.cutout))
        return views


# -- device ops (batched; every one a pure function of its inputs) ---------------------------------------------
def crop_flip(images: Tensor, p: Tensor, size: tuple[int, int]) -> Tensor:
    """Views [len(p), C, th, tw]: rows ``p[:, SRC]`` of ``images`` [N, C, H, W] cropped at (TOP, LEFT), columns
    reversed where FLIP."""
    th, tw = size
    n, (c, h, w) = len(p), images.shape[1:]
    dev = images.device
    rows = p[:, TOP, None] + torch.arange(th, device=dev)
    cols = torch.arange(tw, device=dev).expand(n, tw)
    cols = torch.where(p[:, FLIP, None].bool(), tw - 1 - cols, cols) + p[:, LEFT, None]
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, th * tw).expand(n, c, th * tw)
    src = images.reshape(len(images), c, h * w).index_select(0, p[:, SRC])
    return src.gather(2, flat).view(n, c, th, tw)


_LUMA = (19595, 38470, 7471)


def luma(x: Tensor) -> Tensor:
    """Pillow's RGB -> L (ITU-R 601-2, integer: (19595 R + 38470 G + 7471 B + 0x8000) >> 16) as int32 [m, 1, H, W];
    a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x.to(torch.int32)
    w = torch.tensor(_LUMA, dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
    return ((x.to(torch.int32) * w).sum(1, keepdim=True, dtype=torch.int32) + 0x8000) >> 16


def blend(degenerate: Tensor, x: Tensor, alpha: Tensor) -> Tensor:
    """Pillow's ImagingBlend for 0 <= alpha <= 1: uint8(in1 + alpha * (in2 - in1)) in float32, truncated
    (``degenerate`` = in1 as float32 or uint8; the difference of two levels is exact in float32)."""
    d = degenerate.to(torch.float32)
    return (d + alpha.view(-1, 1, 1, 1) * (x.to(torch.float32) - d)).to(torch.uint8)


_K1 = float(np.float32(1.0) / np.float32(13.0))  # Pillow divides the kernel by its scale in float32
_K5 = float(np.float32(5.0) / np.float32(13.0))


def smooth(x: Tensor) -> Tensor:
    """Pillow's ``filter(ImageFilter.SMOOTH)`` (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 in float32, the sum in
    Filter.c's order, + 0.5, clamped and truncated; the border rows and columns copied), as float32 levels."""
    f = x.to(torch.float32)
    if x.shape[2] < 3 or x.shape[3] < 3:
        return f
    left, right = f[..., :-2] * _K1, f[..., 2:] * _K1  # (float32 products, as Filter.c's KERNEL1x3)
    mid = f[..., 1:-1]
    outer = (left + mid * _K1) + right  # rows y+1 and y-1: (l k1 + m k1) + r k1
    centre = (left + mid * _K5) + right  # row y
    ss = ((outer[:, :, 2:] + 0.5) + centre[:, :, 1:-1]) + outer[:, :, :-2]
    f[:, :, 1:-1, 1:-1] = ss.clamp_(0.0, 255.0).trunc_()
    return f


def affine(x: Tensor, co: Tensor) -> Tensor:
    """Pillow's nearest-neighbour affine transform in 16.16 fixed point (``affine_fixed``), black fill: output
    (x, y) takes input ((a2' + y a1 + x a0) >> 16, (a5' + y a4 + x a3) >> 16) (int32 and an arithmetic shift, as
    Pillow's C); ``co`` [m, 6] int64 (:func:`affine_table`)."""
    m, c, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=torch.int32).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.int32).view(1, 1, w)
    a0, a1, a2, a3, a4, a5 = co.to(torch.int32).view(m, 6, 1, 1).unbind(1)
    xin = (a2 + ys * a1 + xs * a0) >> 16
    yin = (a5 + ys * a4 + xs * a3) >> 16
    ok = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    flat = torch.where(ok, yin * w + xin, h * w).to(torch.int64).view(m, 1, h * w).expand(m, c, h * w)
    src = torch.cat([x.reshape(m, c, h * w), x.new_zeros(m, c, 1)], 2)  # index h * w: the black fill
    return src.gather(2, flat).view(m, c, h, w)


@lru_cache(maxsize=None)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per magnitude 0 .. 9: Posterize's bit mask (int(4 v / 10) + 4 bits kept), Solarize's threshold
    (256 - int(256 v / 10); 255 at v = 0, a magnitude never drawn, to fit uint8), the blend factor (float32)."""
    post = [(~(2 ** (8 - (int(v * 4 / PARAMETER_MAX) + 4)) - 1)) & 0xFF for v in range(PARAMETER_MAX)]
    sol = [min(255, 256 - int(v * 256 / PARAMETER_MAX)) for v in range(PARAMETER_MAX)]
    return (np.array(post, dtype=np.uint8), np.array(sol, dtype=np.uint8),
            np.array([_factor(v) for v in range(PARAMETER_MAX)], dtype=np.float32))


def auto_contrast_lut(x: Tensor) -> Tensor:
    """[m, C, 256] Pillow's ImageOps.autocontrast (cutoff 0) tables per image and band."""
    lo, hi = torch.aminmax(x.reshape(*x.shape[:2], -1), dim=2)
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    ramp = torch.arange(256, device=x.device, dtype=torch.float64)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1.0)  # (255.0 / t would multiply by 1 / t)
    offset = -lo * scale
    lut = (ramp * scale[..., None] + offset[..., None]).to(torch.int64).clamp_(0, 255)  # int(): truncation
    return torch.where((hi <= lo)[..., None], ramp.to(torch.int64), lut)


def equalize_lut(x: Tensor) -> Tensor:
    """[m, C, 256] Pillow's ImageOps.equalize tables: step = (pixels - count of the top level) // 255, level i ->
    (step // 2 + pixels below i) // step (the identity when step is 0)."""
    m, c, h, w = x.shape
    flat = x.reshape(m * c, h * w).to(torch.int64)
    hist = torch.zeros(m * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    top = hist.gather(1, flat.amax(1, keepdim=True))
    step = (h * w - top) // 255
    below = hist.cumsum(1) - hist
    lut = (step // 2 + below) // step.clamp(min=1)
    ramp = torch.arange(256, device=x.device, dtype=torch.int64).expand(m * c, 256)
    return torch.where(step == 0, ramp, lut.clamp_(0, 255)).view(m, c, 256)


_CONSTS: dict = {}


def _const(table: np.ndarray, like: Tensor) -> Tensor:
    """``table`` as a tensor on ``like``'s device (copied there once per process and device)."""
    key = (id(table), like.device)
    got = _CONSTS.get(key)
    if got is None:
        got = _CONSTS[key] = torch.from_numpy(table).to(like.device)
    return got


def lut_ops(x: Tensor, ops: tuple[str, ...], counts: list[int], mags: Tensor) -> Tensor:
    """The lookup-table ops on ``x`` [m, C, H, W]: consecutive runs of ``counts[k]`` images take ``ops[k]``
    (AutoContrast and Equalize through per-image tables, Posterize and Solarize as the tables' arithmetic)."""
    m, c, h, w = x.shape
    post, sol, _ = _tables()
    parts, at = [], 0
    for name, k in zip(ops, counts):
        if not k:
            continue
        sub, v = x[at:at + k], mags[at:at + k]
        if name in ("AutoContrast", "Equalize"):
            lut = auto_contrast_lut(sub) if name == "AutoContrast" else equalize_lut(sub)
            parts.append(lut.gather(2, sub.reshape(k, c, h * w).to(torch.int64)).to(torch.uint8).view(k, c, h, w))
        elif name == "Posterize":  # i & ~(2^(8 - bits) - 1)
            parts.append(sub & _const(post, x).index_select(0, v).view(k, 1, 1, 1))
        else:  # Solarize: i < threshold ? i : 255 - i
            parts.append(torch.where(sub < _const(sol, x).index_select(0, v).view(k, 1, 1, 1), sub, 255 - sub))
        at += k
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def blend_ops(x: Tensor, ops: tuple[str, ...], counts: list[int], mags: Tensor) -> Tensor:
    """ImageEnhance's Brightness / Color / Contrast / Sharpness on ``x`` (runs of ``counts[k]`` images): Pillow's
    blend of each op's degenerate image (as float32 levels) and the image."""
    m, c, h, w = x.shape
    parts, at = [], 0
    for name, k in zip(ops, counts):
        if not k:
            continue
        sub = x[at:at + k]
        if name == "Brightness":  # black
            parts.append(torch.zeros((k, c, h, w), dtype=torch.float32, device=x.device))
        elif name == "Color":  # RGB -> L -> RGB (a grey image is its own degenerate)
            parts.append(luma(sub).to(torch.float32).expand(k, c, h, w))
        elif name == "Contrast":  # int(mean luma + 0.5): in integers, floor((2 sum + n) / 2n), the same value
            total = luma(sub).sum(dim=(1, 2, 3), dtype=torch.int64)
            mean = torch.div(2 * total + h * w, 2 * h * w, rounding_mode="floor")
            parts.append(mean.to(torch.float32).view(k, 1, 1, 1).expand(k, c, h, w))
        else:
            parts.append(smooth(sub))
        at += k
    deg = torch.cat(parts) if len(parts) > 1 else parts[0]
    alpha = _const(_tables()[2], x).index_select(0, mags)
    return blend(deg, x, alpha)


def randaugment_slot(x: Tensor, p: Tensor, slot: int, counts: list[int]) -> None:
    """Op slot ``slot`` of RandAugmentMC on the strong views ``x`` [M, C, H, W] (in place): the images are put in
    the slot's group order (parameter column ORDER; ``counts`` images per op of GROUP_ORDER, then those whose op
    is not applied), each group of ops runs once on its contiguous run, and the images go back."""
    base = SLOT0 + SLOT_COLS * slot
    bounds = [0, *accumulate(counts)]
    n_lut, n_blend, n_aff = len(LUT_OPS), len(BLEND_OPS), len(AFFINE_OPS)
    done = bounds[n_lut + n_blend + n_aff]  # (Identity and not-applied images come last, untouched)
    if not done:
        return
    order = p[:, base + ORDER][:done]
    xs = x.index_select(0, order)
    mags = p[:, base + MAG].index_select(0, order)
    a, b = bounds[0], bounds[n_lut]
    if b > a:
        xs[a:b] = lut_ops(xs[a:b], LUT_OPS, counts[:n_lut], mags[a:b])
    a, b = b, bounds[n_lut + n_blend]
    if b > a:
        xs[a:b] = blend_ops(xs[a:b], BLEND_OPS, counts[n_lut:n_lut + n_blend], mags[a:b])
    a, b = b, done
    if b > a:
        co = p[:, base + AFF:base + AFF + 6].index_select(0, order[a:b])
        xs[a:b] = affine(xs[a:b], co)
    x.index_copy_(0, order, xs)


def cutout(x: Tensor, x0: Tensor, y0: Tensor, side: int, fill: int = CUTOUT_FILL) -> Tensor:
    """RandAugmentMC's CutoutAbs: grey ``fill`` on columns x0 .. x0 + side and rows y0 .. y0 + side (PIL's
    inclusive rectangle, clipped to the image); rows with x0 < 0 are left alone."""
    m, c, h, w = x.shape
    dev = x.device
    cols = torch.arange(w, device=dev).view(1, w)
    rows = torch.arange(h, device=dev).view(1, h)
    in_x = ((cols >= x0[:, None]) & (cols <= x0[:, None] + side) & (x0[:, None] >= 0)).to(torch.uint8)
    in_y = ((rows >= y0[:, None]) & (rows <= y0[:, None] + side)).to(torch.uint8)
    mask = (in_y[:, :, None] * in_x[:, None, :]).unsqueeze(1)  # 1 inside the box
    return x * (1 - mask) + mask * fill
