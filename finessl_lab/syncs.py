"""Count host-device synchronisations on any device, CPU included.

On a GPU a host sync (``.item()``, ``if tensor``, ``.cpu()``, boolean-mask indexing, ``nonzero``, ...) stalls the
Python thread until the device has caught up; a head-level step is ~1 ms of GPU work, so a dozen of them per step
dominate. They cost nothing visible on CPU, which is why they creep in: :func:`count_host_syncs` catches the calls
that *would* sync on an accelerator, on whatever device runs the code (tests/test_host_syncs.py)::

    with count_host_syncs() as syncs:
        trainer._train_step(batch)
    assert syncs.count == 0, syncs.report()
"""
from __future__ import annotations

import traceback
from collections import Counter
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

# calls that read a tensor's value (or a value-dependent shape) on the host
_ALWAYS = {
    Tensor.item: "item", Tensor.tolist: "tolist", Tensor.cpu: "cpu", Tensor.numpy: "numpy",
    Tensor.__bool__: "__bool__", Tensor.__int__: "__int__", Tensor.__float__: "__float__",
    Tensor.__index__: "__index__", Tensor.nonzero: "nonzero", torch.nonzero: "nonzero",
    Tensor.masked_select: "masked_select", torch.masked_select: "masked_select", torch.unique: "unique",
    Tensor.unique: "unique", torch.bincount: "bincount", Tensor.bincount: "bincount",
    torch.argwhere: "argwhere", Tensor.argwhere: "argwhere",
}


def _bool_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, Tensor) and k.dtype == torch.bool for k in keys)


def _to_cpu(args, kwargs) -> bool:
    """``t.to("cpu")`` of a tensor on an accelerator (on CPU ``.to(cpu)`` copies nothing; ``t.cpu()`` is counted
    everywhere, as the explicit form of a device-to-host read)."""
    if not isinstance(args[0], Tensor) or args[0].device.type == "cpu":
        return False
    dev = kwargs.get("device", args[1] if len(args) > 1 else None)
    return (isinstance(dev, str) and dev.startswith("cpu")) or (isinstance(dev, torch.device) and dev.type == "cpu")


class _Counter(TorchFunctionMode):
    def __init__(self, where: str):
        super().__init__()
        self.calls: Counter = Counter()
        self.places: Counter = Counter()
        self.where = where

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _ALWAYS.get(func)
        if name is None:
            if func in (Tensor.__getitem__, Tensor.__setitem__) and _bool_index(args[1]):
                name = f"boolean-mask {func.__name__}"
            elif func is Tensor.to and _to_cpu(args, kwargs):
                name = "to(cpu)"
            elif func in (torch.where, Tensor.nonzero) and len(args) == 1 and not kwargs:
                name = "where(cond)"
            elif func is torch.repeat_interleave and "output_size" not in kwargs:
                name = "repeat_interleave"
        if name is not None:
            self.calls[name] += 1
            frames = [f for f in traceback.extract_stack()[:-1] if self.where in f.filename.replace("\\", "/")]
            if frames:
                f = frames[-1]
                self.places[f"{name} at {f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno}"] += 1
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return sum(self.calls.values())

    def report(self) -> str:
        where = ", ".join(f"{k} x{v}" for k, v in self.places.most_common()) or "(outside finessl_lab)"
        return f"{self.count} host sync(s): {dict(self.calls)}; {where}"


@contextmanager
def count_host_syncs(where: str = "finessl_lab/"):
    """Count, inside the block, every call that reads a tensor's value on the host (a sync on an accelerator);
    ``.calls`` by kind, ``.places`` by file:line under ``where``, ``.report()`` in one line."""
    mode = _Counter(where)
    with mode:
        yield mode
