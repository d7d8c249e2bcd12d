"""The one exception type users see: a bad value, named, with what would be valid.

The CLI turns a :class:`UserError` into ``error: <message>`` on stderr and exit status 2; the Python API
raises it as is, so notebooks get the same one-line message.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class UserError(ValueError):
    """Bad input from the user (config value, path, name). The message is one line and self-explanatory."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def suggest(value: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(what: str, value: str, valid: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``valid``; otherwise raise a UserError naming it and the valid names."""
    valid = list(valid)
    if value not in valid:
        raise UserError(f"unknown {what} {value!r}{suggest(value, valid)}; valid: {', '.join(map(str, valid))}")
    return value


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to ``limit`` characters (a DataFrame passed by mistake must not flood the message)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_type(name: str, value: Any, types: type | tuple[type, ...], valid: str) -> Any:
    """Return ``value`` if it is an instance of ``types`` (bools never count as numbers); else a UserError
    naming the argument, the value, its type and what is valid."""
    types = types if isinstance(types, tuple) else (types,)
    numeric = any(t in (int, float) for t in types) and bool not in types
    if not isinstance(value, types) or (numeric and isinstance(value, bool)):
        raise UserError(f"{name}={short_repr(value)} has type {type(value).__name__}; valid: {valid}")
    return value


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGINT/SIGTERM). A KeyboardInterrupt, so ``except Exception`` in a sweep
    loop does not swallow it; ``exit_code`` follows the shell convention 128 + signal number."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
