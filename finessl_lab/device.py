"""Device and precision: CUDA autocast (bf16 if supported, else fp16 + GradScaler); fp32 on CPU/MPS.

``fp16_pure`` is the official FineSSL code's ``prec: fp16``: the backbone, PEFT parameters and heads are stored
in half precision and SGD updates the fp16 weights directly, with no autocast, no fp32 master weights and no
GradScaler. CUDA only. (Our cosine heads still form their logits in fp32 from the fp16 weights.)"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device={name!r} but CUDA is not available here; valid: auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"run.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"run.device={name!r} but MPS is not available here; valid: auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if device.type != "cuda":
        if precision == "fp16_pure":
            raise UserError(f"run.precision='fp16_pure' (the official code's half-precision weights) needs a CUDA "
                            f"device (got {device.type}); valid here: auto or fp32")
        if precision in ("bf16", "fp16"):
            raise UserError(f"run.precision={precision!r} needs a CUDA device (got {device.type}); valid here: auto or fp32")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(device: torch.device, precision: str):
    if precision in ("fp32", "fp16_pure"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the model's weights and inputs: fp16 for fp16_pure, else fp32 (autocast casts per op)."""
    return torch.float16 if precision == "fp16_pure" else torch.float32
