"""Step-indexed sampling: the indices of a batch are a pure function of (seed, stream, step).

Consecutive passes over a set are seeded permutations, so every sample is seen once per pass (like a
shuffled epoch) and batch ``t`` can be rebuilt from scratch after a resume, in any process or worker, with no
sampler state to save.
"""
from __future__ import annotations

import numpy as np

LABELED, UNLABELED, VIEWS, LABELED_REPLAY = 0, 1, 2, 3  # independent random streams


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
    perm = pass_permutation(n, seed, stream, epoch)  # one shuffle per epoch, as the rebuilt DataLoader
    return perm[j * batch:(j + 1) * batch]
