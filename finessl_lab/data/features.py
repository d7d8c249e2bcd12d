"""Frozen-backbone feature cache: K weak and K strong augmented views of every training image, plus clean
(test-transform) views of the train and test images, computed once and stored under
``<cache_dir>/features/<key>.pt`` (atomic write + SHA-256, see finessl_lab.io).

The key hashes everything the features depend on: backbone identity (name + weights tag or file hash), dataset
identity, the transform parameters, K and the view seed. Head-level training then reads batches from here with
the same algorithm code as image-level training (data.batches.FeatureBatches).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from ..io import load_checkpoint, save_checkpoint
from ..progress import progress_bar
from .transforms import batch_maker, seeded, view_seed

WEAK_STREAM, STRONG_STREAM = 100, 200


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: workers ignore SIGINT/SIGTERM. A terminal Ctrl-C or a scheduler's SIGTERM often
    reaches the whole process group; the main process then finishes its step, saves a checkpoint and shuts the
    workers down itself, instead of dying with 'DataLoader worker exited unexpectedly' (a worker killed by a signal
    makes torch's SIGCHLD handler raise in the main process at an arbitrary point, checkpoint write included, so
    workers must survive a group-wide SIGTERM too). (Workers still exit when the main process dies, even by
    SIGKILL: torch's worker watchdog notices.)

    Because they ignore SIGTERM, ``multiprocessing``'s exit handler, which terminates (SIGTERM) and then joins
    every live child, would wait forever for workers of a loader iterator still alive when the interpreter exits.
    :func:`_reap_workers_at_exit`, registered at import so that it runs before that handler, kills them first."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def _ignores_sigterm(pid: int) -> bool | None:
    """Whether process ``pid`` ignores SIGTERM (Linux /proc); None where that cannot be read."""
    import signal

    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    except (OSError, StopIteration, ValueError):
        return None
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def _reap_workers_at_exit(grace: float = 2.0) -> None:
    """atexit: end the live daemonic children (DataLoader workers) before multiprocessing's exit handler, which
    would SIGTERM and then join them forever if they ignore SIGTERM (``ignore_stop_signals``). Children that
    ignore SIGTERM are SIGKILLed at once (Linux); elsewhere every daemonic child gets SIGTERM and, after ``grace``
    seconds, SIGKILL. At exit nothing reads their results any more, and torch's own worker shutdown is a no-op."""
    import multiprocessing
    import signal
    import threading
    import time

    children = [p for p in multiprocessing.active_children() if p.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():  # torch's SIGCHLD handler would raise on each kill
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in children:
        try:
            p.kill() if _ignores_sigterm(p.pid) else p.terminate()
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for p in children:
        try:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=grace)
        except (OSError, ValueError, AssertionError):
            pass


def _register_reaper() -> None:
    import atexit
    import multiprocessing.util  # noqa: F401  (its exit handler is registered first, so ours runs before it)

    atexit.register(_reap_workers_at_exit)


_register_reaper()


def cache_key(backbone_identity: str, dataset_key: str, transform_desc: dict, views: int, seed: int,
              precision: str = "fp32") -> str:
    """The cache entry's name. ``precision`` (of the extraction forward) enters only when it is not fp32, so fp32
    caches written before it was part of the key stay valid."""
    d = {"backbone": backbone_identity, "dataset": dataset_key, "transform": transform_desc, "views": views,
         "view_seed": seed, "format": 1}
    if precision != "fp32":
        d["precision"] = precision
    blob = json.dumps(d, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ImageViews(torch.utils.data.Dataset):
    """One view of every image: the deterministic transform (stream None) or a seeded random one per image.

    A DataLoader with a batch size fetches through ``__getitems__``: the views build_transforms made are then made
    a batch at a time (data/fastviews.py; the same tensors as ``[self[i] for i in indices]``), reading resized,
    padded images from ``padded`` (a fastviews.PaddedImages of ``images``, shareable between the views of one
    image set) or from a cache of its own."""

    def __init__(self, images, transform, stream: int | None, seed: int, padded=None):
        self.images, self.transform, self.stream, self.seed = images, transform, stream, seed
        self.padded = padded

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        img = self.images[i]
        if self.stream is None:  # deterministic transform
            return self.transform(img)
        return seeded(self.transform, img, view_seed(self.seed, self.stream, i))

    def __getitems__(self, indices) -> list[Tensor]:
        maker = batch_maker(self.transform)
        kind = maker[1] if maker is not None else None
        if maker is not None and (kind == "test") == (self.stream is None):
            fast = maker[0]
            if self.padded is None or self.padded.resize is not fast.resize or self.padded.images is not self.images:
                self.padded = fast.cache(self.images)
            seeds = None if kind == "test" else [view_seed(self.seed, self.stream, int(i)) for i in indices]
            out = fast.make(kind, self.padded, indices, seeds)
            if out is not None:
                return list(out)
        return [self[i] for i in indices]


class ConcatViews(torch.utils.data.ConcatDataset):
    """ConcatDataset of ImageViews whose ``__getitems__`` hands each part its run of indices (batch-level views)."""

    def __getitems__(self, indices) -> list[Tensor]:
        import bisect

        out, run, part = [], [], None
        for i in indices:
            i = int(i)
            k = bisect.bisect_right(self.cumulative_sizes, i)
            if k != part and run:
                out += self.datasets[part].__getitems__(run)
                run = []
            part = k
            run.append(i - (self.cumulative_sizes[k - 1] if k else 0))
        if run:
            out += self.datasets[part].__getitems__(run)
        return out


#: Images per forward pass when extracting on a CPU: EfficientNet-Lite0 at 64 px ran 2.7x faster at batch 64 than
#: at 256 on a 2-core machine (issue 13; smaller activations per batch). On GPUs the requested batch
#: (run.eval_batch_size) is used as is.
CPU_EXTRACT_BATCH = 64

#: The dtype features are stored in: fp16 halves the cache (a 1280-d feature of 21,000 views: 54 MB instead of
#: 108 MB) and its rounding (relative 5e-4) is far below the augmentation noise; heads read them as fp32. The
#: forward pass itself runs in ``run.precision`` (fp32 on CPU; bf16 / fp16 autocast on CUDA).
STORED_DTYPE = torch.float16


def extraction_plan(device, batch_size: int, num_workers: int) -> tuple[int, int]:
    """(batch, workers) for extraction. On a CPU: batches of at most :data:`CPU_EXTRACT_BATCH` and at most one
    worker. Augmentation is a small share of the work next to the frozen forward, so one worker keeps the next
    batch ready while the forward keeps every intra-op thread the process has (``torch.get_num_threads()``, which
    a ``compare --jobs`` pool already sized); the worker sleeps most of the time (benchmarks/cache_build.py).
    ``num_workers`` = 0 keeps augmentation in the main process. Elsewhere the requested values are used as is."""
    if torch.device(device).type != "cpu":
        return int(batch_size), int(num_workers)
    return min(int(batch_size), CPU_EXTRACT_BATCH), min(int(num_workers), 1)


class _ChannelsLast:
    """Context: the backbone in channels_last (CNNs, oneDNN / cuDNN NHWC kernels) during an extraction, restored on
    exit so that whatever runs afterwards sees the backbone exactly as built."""

    def __init__(self, backbone, enabled: bool):
        self.backbone, self.enabled = backbone, enabled

    def __enter__(self):
        if self.enabled:
            self.backbone.to(memory_format=torch.channels_last)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.backbone.to(memory_format=torch.contiguous_format)
        return False


def _extraction_precision(precision: str, device) -> str:
    """run.precision resolved for the frozen forward: fp32 on CPU; on CUDA bf16 / fp16 autocast ('fp16_pure', the
    official half-precision weights, extracts as fp16 too)."""
    from ..device import resolve_precision

    prec = resolve_precision(precision, torch.device(device))
    return "fp16" if prec == "fp16_pure" else prec


def _uses_channels_last(backbone, device) -> bool:
    """channels_last for CNN backbones (oneDNN / cuDNN NHWC kernels); ViTs take NCHW only at the patch conv."""
    return getattr(backbone, "family", None) == "cnn" and torch.device(device).type in ("cpu", "cuda")


def extract(backbone, images, transform, *, stream: int | None, seed: int, device, batch_size: int,
            num_workers: int, desc: str, progress: bool = True, precision: str = "auto") -> Tensor:
    """Features [N, D] (``STORED_DTYPE``, on CPU) of one view of every image (see :func:`extract_views`)."""
    return extract_views(backbone, ImageViews(images, transform, stream, seed), device=device, batch_size=batch_size,
                         num_workers=num_workers, desc=desc, progress=progress, precision=precision)


def extract_views(backbone, views, *, device, batch_size: int, num_workers: int, desc: str, progress: bool = True,
                  precision: str = "auto") -> Tensor:
    """Features [len(views), D] (``STORED_DTYPE``, on CPU) of a dataset of image tensors (e.g. ImageViews).

    Batches come from one DataLoader (augmentation in a worker overlaps the forward); the forward runs under
    ``torch.inference_mode``, in channels_last for CNNs, in ``precision`` (``run.precision``: 'auto' = fp32 on
    CPU, bf16 / fp16 autocast on CUDA), with batch and workers from :func:`extraction_plan`. Features do
    not depend on the batch size, the batch boundaries or the memory format beyond float rounding (the backbone is
    in eval mode)."""
    from ..device import autocast

    dev = torch.device(device)
    batch, workers = extraction_plan(dev, batch_size, num_workers)
    prec = _extraction_precision(precision, dev)
    cl = _uses_channels_last(backbone, dev)
    fmt = torch.channels_last if cl else torch.contiguous_format
    loader = _view_loader(views, dev, batch, workers)
    out = []
    with _ChannelsLast(backbone, cl), torch.inference_mode(), autocast(dev, prec):
        for x in progress_bar(loader, desc=desc, disable=not progress, unit="batch"):
            out.append(backbone(x.to(dev, non_blocking=True).contiguous(memory_format=fmt)).to("cpu", STORED_DTYPE))
    return torch.cat(out).clone()  # a normal tensor (not an inference tensor): callers may modify it in place


def _view_loader(dataset, device, batch_size: int, num_workers: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                       pin_memory=torch.device(device).type == "cuda",
                                       prefetch_factor=2 if num_workers else None,
                                       worker_init_fn=ignore_stop_signals if num_workers else None)


def _view_specs(bundle, transforms, views: int) -> list[tuple[str, object, object, int | None]]:
    """(name, images, transform, stream) of every cached view, in storage order."""
    tr = bundle.train.images
    return ([("train_clean", tr, transforms.test, None), ("test", bundle.test.images, transforms.test, None)]
            + [("weak", tr, transforms.weak, WEAK_STREAM + k) for k in range(views)]
            + [("strong", tr, transforms.strong, STRONG_STREAM + k) for k in range(views)])


def _all_views(extract_one, bundle, transforms, views: int, desc: str) -> dict:
    """{train_clean, test, weak [K, ...], strong [K, ...]} from ``extract_one(images, transform, stream, desc)``."""
    tr = bundle.train.images
    return {
        "train_clean": extract_one(tr, transforms.test, None, f"{desc}: train clean"),
        "test": extract_one(bundle.test.images, transforms.test, None, f"{desc}: test"),
        "weak": torch.stack([extract_one(tr, transforms.weak, WEAK_STREAM + k, f"{desc}: weak view {k + 1}/{views}")
                             for k in range(views)]),
        "strong": torch.stack([extract_one(tr, transforms.strong, STRONG_STREAM + k,
                                           f"{desc}: strong view {k + 1}/{views}") for k in range(views)]),
    }


def compute(backbone, bundle, transforms, views: int, seed: int, device, batch_size: int = 256,
            num_workers: int = 2, progress: bool = True, precision: str = "auto") -> dict:
    """{train_clean, test, weak [K, ...], strong [K, ...]}: every view of every image through one DataLoader (one
    worker start, no pipeline drain between views; the same features as extracting view by view)."""
    backbone.eval()
    specs = _view_specs(bundle, transforms, views)
    maker = batch_maker(transforms.weak)  # the K weak and K strong views read one cache of resized train images
    padded = maker[0].cache(bundle.train.images) if maker is not None else None
    dataset = ConcatViews([ImageViews(images, t, stream, seed, padded if images is bundle.train.images else None)
                           for _, images, t, stream in specs])
    flat = extract_views(backbone, dataset, device=device, batch_size=batch_size, num_workers=num_workers,
                         desc=f"features: {len(dataset):,} views", progress=progress, precision=precision)
    parts = dict(train_clean=[], test=[], weak=[], strong=[])
    for (name, images, _, _), f in zip(specs, flat.split([len(images) for _, images, _, _ in specs])):
        parts[name].append(f)
    return {"train_clean": parts["train_clean"][0], "test": parts["test"][0],
            "weak": torch.stack(parts["weak"]), "strong": torch.stack(parts["strong"])}


#: the last few cache files loaded in this process, by (path, key, mtime, size): a notebook kernel training many
#: runs on one cache reads it once (the partial cache is ~250 MB, ~1-2 s per read), not once per run. The tensors
#: are shared between those runs: nothing in the library writes into them (every use indexes or converts: a copy)
_LOADED: dict = {}
_LOADED_MAX = 2


def forget_loaded() -> None:
    """Drop this process's loaded cache files (a process that only builds caches, e.g. ``reproduce``'s parent,
    need not hold them while its notebooks run)."""
    _LOADED.clear()


def _file_id(path: Path, key: str) -> tuple:
    st = path.stat()
    return str(path.resolve()), key, st.st_mtime_ns, st.st_size


def _load_or_store(path: Path, key: str, what: str, compute_fn, meta: dict) -> dict:
    """The cached features at ``path`` if they were written under ``key``; else ``compute_fn()``, stored atomically.
    A damaged or mismatching entry is recomputed (with a warning), never trusted. A file already loaded by this
    process and unchanged since (same mtime and size) is not read again."""
    if path.is_file():
        ident = _file_id(path, key)
        if ident in _LOADED:
            _LOADED[ident] = _LOADED.pop(ident)  # most recently used last
            return _LOADED[ident]
        try:
            blob = load_checkpoint(path)
            if blob.get("meta", {}).get("key") == key:
                _LOADED[ident] = blob["features"]
                while len(_LOADED) > _LOADED_MAX:
                    _LOADED.pop(next(iter(_LOADED)))
                return blob["features"]
            why = "it was written for other settings"
        except Exception as e:  # noqa: BLE001
            why = str(e)
        print(f"warning: {what} {path} is unusable ({why}); recomputing it", file=sys.stderr)
    feats = compute_fn()
    save_checkpoint(path, {"meta": {"key": key, **meta}, "features": feats})
    return feats


def load_or_compute(cache_root: Path, backbone, bundle, transforms, transform_desc: dict, views: int, seed: int,
                    device, batch_size: int = 256, num_workers: int = 2, progress: bool = True,
                    precision: str = "auto") -> tuple[dict, Path]:
    """Return (features, path); compute and store them if the cache has no valid entry. The forward runs in
    ``precision`` (run.precision; fp32 on CPU); a reduced precision (bf16 / fp16 on CUDA) is part of the key."""
    prec = _extraction_precision(precision, torch.device(device))
    key = cache_key(backbone.identity, bundle.key, transform_desc, views, seed, precision=prec)
    path = Path(cache_root) / "features" / f"{key}.pt"
    meta = {"backbone": backbone.identity, "dataset": bundle.key, "transform": transform_desc, "views": views,
            "view_seed": seed}
    if prec != "fp32":
        meta["precision"] = prec
    feats = _load_or_store(path, key, "feature cache", lambda: compute(backbone, bundle, transforms, views, seed, device,
                                                                       batch_size, num_workers, progress, prec), meta)
    return feats, path


# -- partial cache: activations below the last k blocks (top-k tuning of the embedded CNN) ------------------------

@torch.no_grad()
def extract_below(backbone, k: int, images, transform, *, stream: int | None, seed: int, device, batch_size: int,
                  num_workers: int, desc: str, progress: bool = True) -> Tensor:
    """Activations [N, C, H, W] (fp32, CPU) of one view of every image, below the last ``k`` blocks (batch and
    workers from :func:`extraction_plan`; NCHW, as the tuned top blocks train on them)."""
    loader = _view_loader(ImageViews(images, transform, stream, seed), device,
                          *extraction_plan(device, batch_size, num_workers))
    out = [backbone.activations_below(x.to(device), k).float().cpu()
           for x in progress_bar(loader, desc=desc, disable=not progress, unit="batch")]
    return torch.cat(out)


def load_or_compute_partial(cache_root: Path, backbone, k: int, bundle, transforms, transform_desc: dict, views: int,
                            seed: int, device, batch_size: int = 256, num_workers: int = 2,
                            progress: bool = True) -> tuple[dict, Path]:
    """Like :func:`load_or_compute`, but each view is stored as the frozen activations below the last ``k``
    blocks of ``backbone`` (``backbone.activations_below``), in fp32, so that the top ``k`` blocks can be
    tuned (BN / BitFit / SSF / all of them) from the cache; keys ``train_clean``, ``test``, ``weak``, ``strong``."""
    key = cache_key(backbone.identity + f"|below_last_{k}", bundle.key, transform_desc, views, seed)
    path = Path(cache_root) / "features" / f"{key}.pt"
    kw = dict(seed=seed, device=device, batch_size=batch_size, num_workers=num_workers, progress=progress)

    def compute_partial() -> dict:
        backbone.eval()
        return _all_views(lambda images, t, stream, desc: extract_below(backbone, k, images, t, stream=stream,
                                                                        desc=desc, **kw),
                          bundle, transforms, views, f"activations below top {k}")

    meta = {"backbone": backbone.identity, "below_last": k, "dataset": bundle.key, "transform": transform_desc,
            "views": views, "view_seed": seed}
    return _load_or_store(path, key, "partial feature cache", compute_partial, meta), path
