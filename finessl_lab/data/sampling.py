"""Step-indexed sampling: the indices of a batch are a pure function of (seed, stream, step).

Consecutive passes over a set are seeded permutations, so every sample is seen once per pass (like a
shuffled epoch) and batch ``t`` can be rebuilt from scratch after a resume, in any process or worker, with no
sampler state to save.
"""
from __future__ import annotations

import numpy as np

LABELED, UNLABELED, VIEWS = 0, 1, 2  # independent random streams


def pass_permutation(n: int, seed: int, stream: int, pass_no: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, pass_no]).permutation(n)


def step_positions(n: int, batch: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Positions (0..n-1) of the ``batch`` samples drawn at ``step`` from a set of size ``n``."""
    if n <= 0:
        raise ValueError("cannot sample from an empty set")
    start = step * batch
    out, pos = [], start
    while pos < start + batch:
        p, off = divmod(pos, n)
        take = min(n - off, start + batch - pos)
        out.append(pass_permutation(n, seed, stream, p)[off:off + take])
        pos += take
    return np.concatenate(out)


def step_rng(seed: int, stream: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step, 0x5EED])
