"""Feature-cache build throughput vs the frozen backbone alone, side by side in one run (issue 13, target 4).

Three things are timed in interleaved blocks (medians), on the embedded preset's backbone and transforms:

  backbone  the limit: EfficientNet-Lite0 alone on ready-made (already transformed) batches of 64 images,
            inference_mode, channels_last, fp32, every core as an intra-op thread;
  build     data.features.compute as build.py calls it (the embedded preset's data.num_workers and
            run.eval_batch_size): clean + test + K weak + K strong views of a slice of MNIST-5k, augmentation
            included;
  per-image build with the views made image by image (as before data/fastviews.py made them a batch at a time
            with each train image resized once; RandAugmentMC's lookup-table ops are the new ones in both)
  legacy    the extraction as it was before (batch 256, NCHW, no_grad, one worker next to two intra-op threads),
            a copy kept here for the before/after comparison.

Each line prints images per second; the ratios build / backbone and legacy / backbone are the target's
(>= 0.8). It also prints the largest difference between the new and legacy features (stored fp16).

    .venv/bin/python benchmarks/cache_build.py [--image-size 64] [--images 512] [--blocks 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch
from torchvision import transforms as T

from finessl_lab.build import transform_description  # noqa: F401  (the same transforms as a run)
from finessl_lab.data.datasets import load_dataset
from finessl_lab.data.features import ImageViews, _all_views, compute, ignore_stop_signals
from finessl_lab.data.loading import worker_plan
from finessl_lab.data.transforms import build_transforms
from finessl_lab.io import cache_dir
from finessl_lab.models.backbones import build_backbone
from finessl_lab.presets import resolve


@torch.no_grad()
def legacy_extract(backbone, images, transform, *, stream, seed, device, batch_size, num_workers, desc,
                   progress=False):
    """The pre-issue-13 extraction (batch 256, NCHW, no_grad, fp16 stored), for the before/after comparison."""
    loader = torch.utils.data.DataLoader(ImageViews(images, transform, stream, seed), batch_size=batch_size,
                                         num_workers=num_workers,
                                         worker_init_fn=ignore_stop_signals if num_workers else None)
    return torch.cat([backbone(x.to(device)).float().cpu().half() for x in loader])


def legacy_compute(backbone, bundle, transforms, views, seed, device, batch_size, num_workers):
    backbone.eval()
    kw = dict(seed=seed, device=device, batch_size=batch_size, num_workers=num_workers)
    return _all_views(lambda im, t, s, d: legacy_extract(backbone, im, t, stream=s, desc=d, **kw),
                      bundle, transforms, views, "legacy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=0, help="px (0 = the embedded preset's)")
    ap.add_argument("--images", type=int, default=512, help="training images in the slice (test: a quarter)")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--no-legacy", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default, the cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sets = []
    if a.image_size:
        pad = max(1, a.image_size // 8)
        sets = [f"data.image_size={a.image_size}", f"data.resize={a.image_size}", f"data.crop_padding={pad}"]
    cfg = resolve("embedded", sets=sets)
    device = torch.device("cpu")
    cores = torch.get_num_threads()
    bundle = load_dataset(cfg.data, cache_dir(cfg.run.cache_dir))
    backbone = build_backbone(cfg.model).to(device)
    transforms = build_transforms(cfg.data, backbone.mean, backbone.std)
    n_tr, n_te = a.images, a.images // 4
    mini = SimpleNamespace(train=bundle.train.subset(np.arange(n_tr)), test=bundle.test.subset(np.arange(n_te)))
    views = cfg.run.feature_views
    total = n_tr * (1 + 2 * views) + n_te
    workers = worker_plan(cfg.data.num_workers).workers
    build_kw = dict(batch_size=cfg.run.eval_batch_size, num_workers=workers, progress=False)

    ready = torch.stack([transforms.test(mini.train.images[i]) for i in range(min(256, n_tr))])
    per_image = replace(transforms, **{k: T.Compose(list(getattr(transforms, k).transforms))
                                       for k in ("weak", "strong", "test")})
    net = backbone.to(memory_format=torch.channels_last)

    def run_backbone() -> float:
        torch.set_num_threads(cores)
        t0 = time.perf_counter()
        with torch.inference_mode():
            done = 0
            while done < total:
                for x in ready.split(64):
                    net(x.contiguous(memory_format=torch.channels_last))
                    done += len(x)
        return done / (time.perf_counter() - t0)

    def run_build() -> float:
        t0 = time.perf_counter()
        compute(backbone, mini, transforms, views, cfg.run.view_seed, device, **build_kw)
        return total / (time.perf_counter() - t0)

    def run_per_image() -> float:
        t0 = time.perf_counter()
        compute(backbone, mini, per_image, views, cfg.run.view_seed, device, **build_kw)
        return total / (time.perf_counter() - t0)

    def run_legacy() -> float:
        torch.set_num_threads(cores)
        t0 = time.perf_counter()
        legacy_compute(backbone.to(memory_format=torch.contiguous_format), mini, transforms, views,
                       cfg.run.view_seed, device, 256, 1 if cores > 1 else 0)
        backbone.to(memory_format=torch.channels_last)
        return total / (time.perf_counter() - t0)

    runs = {"backbone": run_backbone, "build": run_build, "per-image": run_per_image} | \
        ({} if a.no_legacy else {"legacy": run_legacy})
    times: dict[str, list[float]] = {k: [] for k in runs}
    run_backbone()  # warm-up (allocator, oneDNN kernels)
    for _ in range(a.blocks):
        for k, fn in runs.items():
            times[k].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"embedded preset at {cfg.data.image_size} px: {n_tr} train + {n_te} test images, K={views} "
          f"-> {total} views per build; {cores} threads, build workers {workers}; medians of {a.blocks} blocks")
    for k in runs:
        print(f"  {k:9s} {med[k]:8.0f} img/s   (blocks: {', '.join(f'{v:.0f}' for v in times[k])})")
    print(f"  build / backbone  = {med['build'] / med['backbone']:.2f}   (target >= 0.8)")
    print(f"  per-image / backbone = {med['per-image'] / med['backbone']:.2f}")
    if "legacy" in med:
        print(f"  legacy / backbone = {med['legacy'] / med['backbone']:.2f}")
        new = compute(backbone, mini, transforms, views, cfg.run.view_seed, device, **build_kw)
        old = legacy_compute(backbone.to(memory_format=torch.contiguous_format), mini, transforms, views,
                             cfg.run.view_seed, device, 256, 1 if cores > 1 else 0)
        diff = max(float((new[k].float() - old[k].float()).abs().max()) for k in new)
        scale = max(float(old[k].float().abs().max()) for k in old)
        print(f"  features new vs legacy: max |diff| {diff:.2e} (largest |feature| {scale:.2f}; "
              f"new dtype {new['weak'].dtype})")


if __name__ == "__main__":
    main()
