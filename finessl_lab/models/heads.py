"""Cosine classifier heads and class-mean prototypes.

``logits = s * normalize(f) @ normalize(W).T``. The scale ``s`` is parametrised either directly as
``logit_scale`` (``scale_param="direct"``, the official code: SGD and weight decay act on s itself) or as
``log_scale`` (``"log"``: exponentiated in ``forward``; a step on log s moves s by a factor, ~200x larger steps at
s = 14.3 than the direct form). Either is a parameter when learnable, a buffer otherwise. The head always computes
in fp32 with autocast disabled, so a bf16/fp16 autocast region never degrades the softmax that follows.

:func:`random_unit_rows` is the official random init: rows uniform(-1, 1) renormalised to unit norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from ..errors import UserError


class CosineHead(nn.Module):
    """A cosine-similarity classifier with a (learnable) temperature-like scale."""

    SCALE_PARAMS = ("log", "direct")

    def __init__(self, in_dim: int, num_classes: int, scale: float = 1 / 0.07, learn_scale: bool = True,
                 scale_param: str = "log"):
        super().__init__()
        if scale_param not in self.SCALE_PARAMS:
            raise UserError(f"scale_param={scale_param!r} is not valid; valid: {', '.join(self.SCALE_PARAMS)}")
        if in_dim < 1 or num_classes < 1:
            raise UserError(f"a cosine head needs in_dim >= 1 and num_classes >= 1, got {in_dim} and {num_classes}")
        if not scale > 0:
            raise UserError(f"cosine-head scale must be > 0, got {scale}")
        self.in_dim, self.num_classes, self.learn_scale = int(in_dim), int(num_classes), bool(learn_scale)
        self.scale_param = scale_param
        # Deterministic placeholder init that leaves the global RNG alone; build_model overwrites it.
        self.weight = nn.Parameter(random_unit_rows(num_classes, in_dim, torch.Generator().manual_seed(0)))
        name = "log_scale" if scale_param == "log" else "logit_scale"
        value = torch.tensor(math.log(scale) if scale_param == "log" else float(scale), dtype=torch.float32)
        if learn_scale:
            setattr(self, name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    # inside normalised_once(): a _LAZY_* marker until the block's first call computes (unit rows, scale), then those
    _once: "tuple[Tensor, Tensor] | object | None" = None
    _direct = False  # inside normalised_once() with no module hooks anywhere: __call__ goes straight to forward

    @property
    def scale(self) -> Tensor:
        s = self.log_scale if self.scale_param == "log" else self.logit_scale
        if s.dtype != torch.float32:
            s = s.float()
        return s.exp() if self.scale_param == "log" else s

    def normalised(self) -> tuple[Tensor, Tensor]:
        """(W with unit rows in fp32, scale): computed once per ``normalised_once`` block (on the block's first
        call, so a head the step never calls costs nothing), else on every call."""
        once = self._once
        if once is None:
            return self._normalise()
        if once is _LAZY_GRAD or once is _LAZY_NO_GRAD:
            # in the grad mode of the block's entry (the first call may come inside the step's no_grad region,
            # yet the losses after it need the graph), in fp32 outside any autocast region
            w = self.weight
            grad, dev = once is _LAZY_GRAD, w.device.type
            if torch.is_autocast_enabled(dev):
                with torch.set_grad_enabled(grad), torch.autocast(device_type=dev, enabled=False):
                    once = self._normalise(w)
            else:  # (the common case: no context-manager objects, ~10 us a step)
                before = torch.is_grad_enabled()
                torch._C._set_grad_enabled(grad)
                try:
                    once = self._normalise(w)
                finally:
                    torch._C._set_grad_enabled(before)
            object.__setattr__(self, "_once", once)
        return once

    def _normalise(self, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if w is None:
            w = self.weight
        return unit_rows(w if w.dtype == torch.float32 else w.float()), self.scale

    @torch.no_grad()
    def init_weight(self, weight: Tensor) -> None:
        """Copy prototypes ``weight`` [num_classes, in_dim] into the head."""
        expected = (self.num_classes, self.in_dim)
        if tuple(weight.shape) != expected:
            raise UserError(f"head prototypes have shape {tuple(weight.shape)}, expected {expected} (classes, feature dim)")
        if not torch.isfinite(weight).all():
            raise UserError("head prototypes contain NaN or Inf")
        self.weight.copy_(weight.to(self.weight))

    _features: dict | None = None  # inside normalised_once(): unit-norm features shared by the heads

    def __call__(self, *args, **kwargs):
        if self._direct:  # (no hooks to run: skip Module.__call__'s dispatch, ~1-2 us a call)
            if len(args) == 1 and not kwargs and not torch.is_autocast_enabled(args[0].device.type):
                return self._forward(args[0])  # (forward's own path without autocast)
            return self.forward(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def forward(self, features: Tensor) -> Tensor:
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(device_type=features.device.type, enabled=False):
                return self._forward(features)
        return self._forward(features)  # no autocast region to leave (the fp32 path: ~8 us less per call)

    def _forward(self, features: Tensor) -> Tensor:
        # unit rows of the features; inside normalised_once computed once per input tensor for all heads (the main
        # and aux heads read the same views; a detached input reuses the normalised rows, detached). Written
        # inline: this runs six times per training step.
        x = features if features.dtype == torch.float32 else features.float()
        cache = self._features
        f = None
        if cache is not None:
            key = (features.data_ptr(), features.shape, features.stride(), features.dtype, features._version)
            hit = cache.get(key)
            if hit is not None:
                f = hit[1]
                if not features.requires_grad:
                    if f.requires_grad:
                        f = f.detach()
                elif not f.requires_grad:  # cached from a detached view: this input needs the graph
                    f = None
        if f is None:
            f = unit_rows(x)
            if cache is not None:
                cache[key] = (features, f)  # holding the input keeps its memory (and so the key) from being reused
        once = self._once
        w, scale = once if type(once) is tuple else self.normalised()
        return scale * (f @ w.t())

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_classes={self.num_classes}, learn_scale={self.learn_scale}, "
                f"scale_param={self.scale_param}")


def unit_rows(x: Tensor) -> Tensor:
    """``F.normalize(x, dim=-1)``: the same ops (so the same bits, forward and backward) without its Python layers
    (``F.normalize`` -> ``Tensor.norm`` -> ``torch.functional.norm``), called five times per training step."""
    return x / torch.linalg.vector_norm(x, 2, -1, True).clamp_min(1e-12).expand_as(x)


# CosineHead._once inside normalised_once() before the head's first call: the grad mode on entering the block
_LAZY_GRAD, _LAZY_NO_GRAD = object(), object()


def _no_hooks(m: nn.Module) -> bool:
    """True if calling ``m`` would run no hook and no compiled or traced wrapper: exactly the case in which
    ``Module.__call__`` calls ``forward`` and nothing else."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or _module._global_backward_pre_hooks
                or m._compiled_call_impl is not None or torch._C._get_tracing_state())


class normalised_once:  # noqa: N801 (used as a function: ``with normalised_once(main, aux):``)
    """Inside the block, each :class:`CosineHead` among ``heads`` normalises its weight (and exponentiates its log
    scale) once, on its first call, however often it is called (a training step calls the heads up to six times;
    a head the step never calls, as FixMatch's aux head, costs nothing), and each input feature tensor is
    normalised once for all of them. The cached tensors are part of the autograd graph, so gradients are those of
    the uncached form; the weights must not change inside the block (the optimiser steps after it). A head with no
    hooks registered (its own or global ones, checked on entering the block) is called without
    ``Module.__call__``'s dispatch; one with hooks goes through it, so the hooks run. Other modules pass through
    unchanged. (A class rather than a generator context manager: entered once per training step.)"""

    __slots__ = ("heads",)

    def __init__(self, *heads):
        self.heads = [h for i, h in enumerate(heads) if isinstance(h, CosineHead) and h not in heads[:i]]

    def __enter__(self):
        shared: dict = {}
        plain_set = object.__setattr__  # (plain attributes: nn.Module.__setattr__'s checks cost ~2 us each)
        lazy = _LAZY_GRAD if torch.is_grad_enabled() else _LAZY_NO_GRAD
        for h in self.heads:
            plain_set(h, "_once", lazy)
            plain_set(h, "_features", shared)
            plain_set(h, "_direct", _no_hooks(h))

    def __exit__(self, *exc):
        plain_set = object.__setattr__
        for h in self.heads:
            plain_set(h, "_once", None)
            plain_set(h, "_features", None)
            plain_set(h, "_direct", False)
        return False


def random_unit_rows(num_classes: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """The official random head init: entries uniform(-1, 1), each row renormalised to unit L2 norm
    (the official ``uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)``). Unit rows matter for a cosine head: the
    gradient on W is divided by |W|, so rows of norm ~sqrt(dim) would learn ~|W|^2 times slower."""
    w = torch.rand(num_classes, dim, generator=generator) * 2 - 1
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def class_mean_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class mean of the L2-normalised ``features`` [N, D]; a class without a sample is a UserError."""
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise UserError(f"class-mean init needs features [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    labels = labels.to(features.device).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes - 1}], got range [{int(labels.min())}, {int(labels.max())}]")
    f = F.normalize(features.float(), dim=-1)
    sums = torch.zeros(num_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise UserError(f"class-mean head init: no labeled sample for class(es) {shown}; every class needs at least one")
    return sums / counts.unsqueeze(1).to(f.dtype)
