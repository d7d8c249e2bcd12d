"""SSL algorithms: a base class with swappable pseudo-labelling / masking / weighting hooks and a registry.

Importing this package registers every built-in algorithm in :data:`REGISTRY`.
"""
from .base import (REGISTRY, Algorithm, Heads, RoundContext, StepOutput, UnlabeledViews, build_algorithm,
                   register)
from . import supervised, fixmatch, finessl  # noqa: F401  (registration side effect)
from . import pseudolabel, flexmatch, freematch, softmatch, debiaspl, clip_pseudolabel, ulfine  # noqa: F401

__all__ = ["REGISTRY", "Algorithm", "Heads", "RoundContext", "StepOutput", "UnlabeledViews", "build_algorithm", "register"]
