"""`opt()`: a dataclass field that carries its own validation rule (range or choices) and help text.

Kept free of imports from the rest of the package so that algorithm modules can declare their options next to
their code and `config.py` can gather them into one typed tree.
"""
from __future__ import annotations

from dataclasses import field
from typing import Any, Sequence


def opt(default: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: Sequence[str] | None = None, help: str = ""):
    """A field with a default, an optional numeric range [lo, hi] (open ends if *_open) or a set of choices."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": tuple(choices) if choices is not None else None, "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def describe_range(meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"{lo} {'<' if meta['lo_open'] else '<='} value {'<' if meta['hi_open'] else '<='} {hi}"
    if lo is not None:
        return f"value {'>' if meta['lo_open'] else '>='} {lo}"
    if hi is not None:
        return f"value {'<' if meta['hi_open'] else '<='} {hi}"
    return "any value"


def in_range(value: float, meta: dict) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta["lo_open"] else value < lo):
        return False
    if hi is not None and (value >= hi if meta["hi_open"] else value > hi):
        return False
    return True
