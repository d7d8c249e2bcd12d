"""The one exception type users see: a bad value, named, with what would be valid.

The CLI turns a :class:`UserError` into ``error: <message>`` on stderr and exit status 2; the Python API
raises it as is, so notebooks get the same one-line message.
"""
from __future__ import annotations

import difflib
from typing import Iterable


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
