"""Sizing DataLoader workers and intra-op threads to the cores this process may use.

Each DataLoader worker runs one thread (torch sets that in workers); the main process trains with
``torch.get_num_threads()`` intra-op threads. With 2 workers + 2 threads on 2 cores they fight for the cores
(issue 13 measured a 4.4x slower image-mode step), so :func:`worker_plan` keeps workers + threads within the
cores: ``data.num_workers`` is an upper bound, at least one core is left to the training process, and it gets
every core the workers do not use. Batches are a pure function of (seed, step), so the plan never changes results.
"""
from __future__ import annotations

import os
from typing import NamedTuple


class WorkerPlan(NamedTuple):
    workers: int   # DataLoader worker processes (one thread each)
    threads: int   # intra-op threads of the main (training) process


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``), shared
    out among the processes torchrun starts on this node (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def worker_plan(requested: int, cores: int | None = None) -> WorkerPlan:
    """``min(requested, cores - 1)`` workers and the remaining cores as intra-op threads (workers + threads ==
    cores, or 0 workers and all cores as threads when ``requested`` is 0 or there is one core)."""
    cores = available_cores() if cores is None else max(1, int(cores))
    workers = max(0, min(int(requested), cores - 1))
    return WorkerPlan(workers, cores - workers)
