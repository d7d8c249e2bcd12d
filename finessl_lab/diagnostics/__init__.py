"""Diagnostics of a run: metrics on arrays (:mod:`.metrics`), recorder hooks (:mod:`.recorders`) and a per-run
summary table (:func:`summarize_runs`)."""
from . import metrics, recorders  # noqa: F401
from .summary import summarize_runs  # noqa: F401

__all__ = ["metrics", "recorders", "summarize_runs"]
