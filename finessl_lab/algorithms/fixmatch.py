"""FixMatch (Sohn et al., 2020): hard pseudo-labels from the weak view, kept when max prob >= threshold,
cross-entropy on a strong view. That is exactly the base template; the paper's fine-tuning setting uses
threshold 0.7 instead of 0.95 (``algorithm.threshold``) and ``algorithm.unlabeled_weight`` as lambda_u."""
from __future__ import annotations

from .base import Algorithm, register


@register
class FixMatch(Algorithm):
    name = "fixmatch"
    stack_state = ()  # stateless: trains stacked (stacked.py)
