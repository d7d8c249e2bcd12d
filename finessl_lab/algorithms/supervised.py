"""Supervised-only: the labeled images alone, plain cross-entropy on the main head."""
from __future__ import annotations

from .base import Algorithm, register


@register
class Supervised(Algorithm):
    name = "supervised"
    stack_state = ()  # stateless: trains stacked (stacked.py)
    uses_unlabeled = False
