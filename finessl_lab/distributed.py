"""Data-parallel training through PyTorch's own engine: ``torchrun --nproc_per_node=N -m finessl_lab train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`init` joins the process group
(NCCL when CUDA is available, gloo on CPU; ``FINESSL_LAB_DIST_BACKEND`` overrides) and, on GPUs, pins each rank
to ``cuda:LOCAL_RANK``. Every helper below is a no-op (or the identity) in a single process, so the trainer and
the algorithms call them unconditionally.

What stays exactly as in one process:
  * the GLOBAL batch and the steps are the config's: the batch source draws the global batch of step t (a pure
    function of (seed, step)) and rank r trains on its contiguous slice r/N (:func:`shard_batch`); per-sample
    views are seeded by the GLOBAL position, so 1 and N processes see the same images and views
  * gradients: DDP averages them over ranks; with equal local batches the mean of local means is the global mean
  * statistics that steer the losses (class pace, FlexMatch slots, EMA priors and thresholds, ULFine's
    prototypes): the algorithms update them from the GLOBAL batch, gathered rank by rank (:func:`gather_rows`),
    so every rank holds the same state and applies the same margins / thresholds
  * masked means (FineSSL's aux loss) use the global count of masked rows (:func:`global_masked_mean`)
Only rank 0 writes files; the others wait at a barrier at the end.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from dataclasses import fields, is_dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError

_CONTROL = None  # a gloo group for barriers and CPU flags (stop requests, epoch logs): no GPU sync for them
CONTROL_TIMEOUT = timedelta(hours=6)  # rank 0 may build a large feature cache while the others wait


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend() -> str:
    """``nccl`` on CUDA, ``gloo`` otherwise (``FINESSL_LAB_DIST_BACKEND`` overrides)."""
    b = os.environ.get("FINESSL_LAB_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if b not in ("nccl", "gloo"):
        raise UserError(f"FINESSL_LAB_DIST_BACKEND={b!r} is not valid; valid: nccl, gloo")
    return b


def init() -> bool:
    """Join the process group torchrun describes (once; later calls do nothing). Returns :func:`is_distributed`."""
    global _CONTROL
    if not launched() or dist.is_initialized():
        return is_distributed()
    b = backend()
    if b == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=b)
    _CONTROL = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return True


def destroy() -> None:
    global _CONTROL
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTROL = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_CONTROL)


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds the feature cache and the split), the others after it, reading
    what it wrote."""
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield


def device_of_collectives() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# -- the batch ------------------------------------------------------------------------------------------------
def check_divisible(batch_size: int, unlabeled_batch: int) -> None:
    """The global batches must split evenly over the ranks (equal local batches keep DDP's mean exact)."""
    n = world_size()
    for name, b in (("optim.batch_size", batch_size), ("optim.mu * optim.batch_size", unlabeled_batch)):
        if b % n:
            raise UserError(f"{name}={b} does not split over {n} processes; valid: a multiple of {n} (the global "
                            f"batch stays the config's; each process trains on 1/{n} of it)")


def shard(n: int) -> slice:
    """This rank's contiguous slice of ``n`` rows (``n`` divisible by the world size)."""
    from .data.batches import rank_slice

    return rank_slice(n, rank(), world_size())


def shard_batch(batch):
    """This rank's slice of a global :class:`~finessl_lab.data.batches.Batch` (labeled and unlabeled parts are
    sliced separately); the batch itself in a single process."""
    if not is_distributed():
        return batch
    lab = shard(len(batch.x))
    unl = shard(len(batch.u_weak)) if batch.u_weak is not None else None
    out = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        out[f.name] = None if v is None else v[lab] if f.name in ("x", "y") else v[unl]
    return replace(batch, **out)


# -- collectives ----------------------------------------------------------------------------------------------
def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor's rows over the ranks, in rank order (= the global batch order), in ONE collective;
    the tensors unchanged in a single process. All ranks pass tensors of the same shapes (equal local batches).
    Values travel as float64, so integer indices, bools and fp32/bf16 values come back exactly."""
    if not is_distributed():
        return tensors
    rows = len(tensors[0])
    flat = [t.detach().reshape(rows, -1) for t in tensors]
    widths = [f.shape[1] for f in flat]
    dev = device_of_collectives()
    packed = torch.cat([f.to(dev, torch.float64) for f in flat], dim=1)
    parts = [torch.empty_like(packed) for _ in range(world_size())]
    dist.all_gather(parts, packed)
    whole = torch.cat(parts)
    out, col = [], 0
    for t, w in zip(tensors, widths):
        out.append(whole[:, col:col + w].reshape(-1, *t.shape[1:]).to(t.device, t.dtype))
        col += w
    return tuple(out)


def all_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over the ranks (a new tensor; ``t`` itself in a single process)."""
    if not is_distributed():
        return t
    dev = device_of_collectives()
    s = t.detach().to(dev, torch.float64).clone()
    dist.all_reduce(s)
    return s.to(t.device, t.dtype)


def global_masked_mean(per: Tensor, keep: Tensor, local: Tensor) -> Tensor:
    """Mean of ``per`` over the rows ``keep`` of the GLOBAL batch, scaled for DDP's gradient average (so after
    averaging the gradient equals one process's); ``local`` (the single-process value) when not distributed.
    0 when no row of the global batch is kept."""
    if not is_distributed():
        return local
    keep = keep > 0
    count = all_sum(keep.sum().to(torch.float64)).clamp_min(1)
    return torch.where(keep, per, torch.zeros_like(per)).sum() * world_size() / count.to(per.dtype)


def all_true(flag) -> bool:
    """True when ``flag`` (a bool or a 0-d tensor) holds on every rank (one host sync, as ``bool(tensor)``)."""
    if not is_distributed():
        return bool(flag)
    t = torch.as_tensor(bool(flag), dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_CONTROL)
    return bool(t)


def any_flag(flag: bool) -> bool:
    """True when ``flag`` is set on any rank (stop requests: every rank stops after the same step)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor(int(bool(flag)), dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_CONTROL)
    return bool(t)


def mean_dict(d: dict) -> dict:
    """Per-key mean over the ranks of a dict of numbers (the epoch's accumulated logs); ``d`` in one process.
    Every rank must hold the same keys."""
    if not is_distributed() or not d:
        return d
    keys = sorted(d)
    t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=_CONTROL)
    mean = {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}
    return {k: mean[k] for k in d}  # the caller's key order (the metrics.csv columns)


def gather_record(record):
    """A :class:`~finessl_lab.hooks.StepRecord` of the GLOBAL batch: its per-sample tensors gathered over the ranks
    (one collective), so hooks and recorders see what one process sees."""
    if not is_distributed() or record is None or not is_dataclass(record):
        return record
    names = [f.name for f in fields(record) if isinstance(getattr(record, f.name), Tensor)
             and getattr(record, f.name).ndim >= 1]
    if not names:
        return record
    got = gather_rows(*(getattr(record, n) for n in names))
    return replace(record, **dict(zip(names, got)))


# -- the model ------------------------------------------------------------------------------------------------
class StepModule(torch.nn.Module):
    """One training forward (backbone on all views, then the algorithm's step) as a module, so that DDP sees the
    whole step and averages every gradient it produces. The algorithm is a plain attribute, not a submodule."""

    def __init__(self, model, algorithm):
        super().__init__()
        self.model = model
        self.algorithm = algorithm

    def forward(self, x: Tensor, sizes: list[int], y: Tensor, u_index):
        from .algorithms import Heads, UnlabeledViews

        feats = self.model.features(x).split(sizes)
        u = UnlabeledViews(feats[1], [feats[2], feats[3]]) if len(feats) > 1 else None
        return self.algorithm.step(Heads(self.model.main, self.model.aux), feats[0], y, u, u_index)


def wrap(model, algorithm):
    """A DDP-wrapped :class:`StepModule` (parameters broadcast from rank 0), or None in a single process.
    ``find_unused_parameters``: algorithms leave the aux head (or a whole head, some steps) without gradient."""
    if not is_distributed():
        return None
    step = StepModule(model, algorithm)
    ids = [local_rank()] if dist.get_backend() == "nccl" else None
    return torch.nn.parallel.DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)
