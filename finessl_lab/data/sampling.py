"""Step-indexed sampling: the indices of a batch are a pure function of (seed, stream, step).

Consecutive passes over a set are seeded permutations, so every sample is seen once per pass (like a
shuffled epoch) and batch ``t`` can be rebuilt from scratch after a resume, in any process or worker, with no
sampler state to save.

A pass's permutation is computed once and kept (:class:`PermutationCache`, a few recent passes per process), so a
step costs O(batch), not O(n): at 1.28M unlabeled slots permuting every step cost 17.8 ms (issue 13). The cache
changes no result: a permutation is a pure function of (n, seed, stream, pass).
"""
from __future__ import annotations

from collections import OrderedDict
from threading import Lock

import numpy as np

LABELED, UNLABELED, VIEWS, LABELED_REPLAY = 0, 1, 2, 3  # independent random streams


def pass_permutation(n: int, seed: int, stream: int, pass_no: int) -> np.ndarray:
    """The seeded permutation of 0..n-1 for pass ``pass_no`` of ``stream`` (int64; computed afresh, O(n))."""
    return np.random.default_rng([seed, stream, pass_no]).permutation(n)


class PermutationCache:
    """Recently used pass permutations, stored read-only (int32 where n allows: 5 MB at 1.28M). A step reads its
    slice in O(batch); a new pass costs one O(n) permutation. Each stream (n, seed, stream) keeps its two latest
    passes, so the many short passes of a small labeled set never push out a big unlabeled one; beyond that the
    least recently used go when there are more than ``max_entries`` permutations or ``max_elements`` positions in
    all (128 MB at the default). Thread-safe."""

    def __init__(self, max_entries: int = 64, max_elements: int = 1 << 25):
        self.max_entries, self.max_elements, self._lock = int(max_entries), int(max_elements), Lock()
        self._perms: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._elements = 0

    def get(self, n: int, seed: int, stream: int, pass_no: int) -> np.ndarray:
        key = (int(n), int(seed), int(stream), int(pass_no))
        with self._lock:
            perm = self._perms.get(key)
            if perm is not None:
                self._perms.move_to_end(key)
                return perm
        perm = pass_permutation(*key)
        if n <= np.iinfo(np.int32).max:
            perm = perm.astype(np.int32)
        perm.flags.writeable = False
        with self._lock:
            if key not in self._perms:
                same = [k for k in self._perms if k[:3] == key[:3]]  # this stream's passes, oldest first
                for k in same[:-1]:  # keep its last one (a batch may span two passes) and this one
                    self._elements -= len(self._perms.pop(k))
                self._perms[key] = perm
                self._elements += len(perm)
            while self._perms and (len(self._perms) > self.max_entries or self._elements > self.max_elements):
                self._elements -= len(self._perms.popitem(last=False)[1])
        return perm

    def clear(self) -> None:
        with self._lock:
            self._perms.clear()
            self._elements = 0


PERMUTATIONS = PermutationCache()  # per process (each DataLoader worker has its own); a cache, not state


def _slice(n: int, seed: int, stream: int, pass_no: int, start: int, stop: int) -> np.ndarray:
    return PERMUTATIONS.get(n, seed, stream, pass_no)[start:stop].astype(np.int64)


def step_positions(n: int, batch: int, step: int, seed: int, stream: int) -> np.ndarray:
    """Positions (0..n-1) of the ``batch`` samples drawn at ``step`` from a set of size ``n``."""
    if n <= 0:
        raise ValueError("cannot sample from an empty set")
    start = step * batch
    out, pos = [], start
    while pos < start + batch:
        p, off = divmod(pos, n)
        take = min(n - off, start + batch - pos)
        out.append(_slice(n, seed, stream, p, off, off + take))
        pos += take
    return out[0] if len(out) == 1 else np.concatenate(out)


def step_rng(seed: int, stream: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step, 0x5EED])


def replayed_step(step: int, steps_per_epoch: int, n: int, batch: int) -> int:
    """The step whose labeled batch the official stream shows at ``step``.

    The official code wraps a DataLoader(shuffle=True, drop_last=True) in ``itertools.cycle`` and rebuilds it every
    epoch; ``cycle`` stores the first pass and replays it, so for the rest of the epoch the same ``n // batch``
    batches come back in the same order, with the same augmentation. Step ``e * steps_per_epoch + j`` therefore
    shows the batch (and views) of step ``e * steps_per_epoch + j mod (n // batch)``: a quirk of the official
    code, reproduced by ``data.labeled_stream=replay``."""
    per_pass = n // batch
    if per_pass < 1:
        from ..errors import UserError

        raise UserError(f"data.labeled_stream=replay drops the last incomplete batch (as the official DataLoader does), "
                        f"but the {n} labeled images are fewer than optim.batch_size={batch}; valid: batch_size <= {n}, "
                        "or data.labeled_stream=fresh")
    epoch, j = divmod(step, steps_per_epoch)
    return epoch * steps_per_epoch + j % per_pass


def replay_positions(n: int, batch: int, step: int, steps_per_epoch: int, seed: int,
                     stream: int = LABELED_REPLAY) -> np.ndarray:
    """Positions of the labeled batch at ``step`` under the official replayed stream: batch ``j mod (n // batch)``
    of the epoch's own seeded permutation (drop_last: the last ``n mod batch`` images sit out the epoch)."""
    epoch, j = divmod(replayed_step(step, steps_per_epoch, n, batch), steps_per_epoch)
    return _slice(n, seed, stream, epoch, j * batch, (j + 1) * batch)  # one shuffle per epoch, as the DataLoader
