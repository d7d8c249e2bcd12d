"""Image mode: the cost of our data pipeline (issue 13, target 1: step with the pipeline / bare step <= 1.25).

A tiny, randomly initialised open_clip ViT (2 layers, width 64, 32 px; a speed fixture, not a pretrained model)
with VPT-deep trains FineSSL on embedded MNIST digits. Ways of feeding the same training step
(``Trainer._train_step``: uint8 views normalised on the device, forward of all views, loss, backward, optimizer
step) are timed in interleaved blocks (so load on a shared machine hits each alike), and the median per-step time
of each is compared with the bare step:

  bare       ready-made batches already in memory, torch threads = all cores
  bare-1t    the same with one intra-op thread (what worker_plan leaves training on 2 cores); the limit the target
             is measured against is the faster of the two bare ways
  pipeline   our DataLoader as training uses it (data.transport=uint8, workers and threads from worker_plan)
  inline     no workers: the batches made in the training process between steps, all cores as threads
  fp32       the pipeline with data.transport=float32 (normalised fp32 views, the pre-fix transport)
  per-image  the pipeline with the views made image by image (seeded_many; as before data/fastviews.py made them
             a batch at a time; the RandAugmentMC lookup-table ops are the new ones in both)
  before     the pipeline as it was before issue 13's data-side fixes: fp32 transport, torchvision's RandomCrop
             (reflect padding through numpy), the RNGs saved and restored around every image (same views)
  naive      data.num_workers workers AND all cores as intra-op threads (the oversubscribed pre-fix setting)
  device     the pipeline with data.views=device (data/device_views.py): no workers, all cores as threads, the
             training process gathers the cached padded uint8 images, the views are made with batched torch ops
             where the trainer normalises the batch (here the CPU). One source for all blocks, its cache warmed
             first, as a run keeps its one in-process source (the pipeline's worker restarts at each block, so its
             cache fills during the timed steps; it hides that work in its own process).
  device-1t  the same with one intra-op thread: against bare-1t, the cost data.views=device adds to a step, which a
             loaded machine distorts less than the 2-thread ways (OpenMP's barrier waits for a preempted thread)

The device ways' strong views are RandAugmentMC's: with the 'clean' fidelity's data.strong_aug=randaugment the
other ways make torchvision RandAugment views (``--set data.strong_aug=randaugment_mc`` makes every way use
RandAugmentMC).

``--ways`` picks some (default: bare bare-1t pipeline fp32 before device; inline and naive run 2 threads next to
other work, which on a loaded machine mostly measures the load).

It also prints the cost of making one batch in-process (augmentation only, no training; for data.views=device
the host's gathering plus the device's view making, CPU time of one thread). Worker start-up is not
timed (the first batch of each block is fetched before the clock starts).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import open_clip
import torch
from torchvision import transforms as T

from finessl_lab.data.batches import ImageBatches
from finessl_lab.data.features import ignore_stop_signals
from finessl_lab.data.loading import available_cores, worker_plan
from finessl_lab.data.transforms import ReflectRandomCrop, build_transforms, seeded, view_seed
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}


class Before(ImageBatches):
    """The views as made before issue 13's fixes: ``seeded()`` (RNG save/restore) around every image."""

    def _views(self, transform, idx, stream: int, step: int, start: int = 0):
        s = self.split.seed
        return torch.stack([seeded(transform, self.images[int(i)], view_seed(s, stream, step, start + j))
                            for j, i in enumerate(idx)])


def timed_steps(trainer: Trainer, batches, steps: int) -> float:
    """Mean ms per step over ``steps`` steps, after one untimed step (worker start-up, warm caches)."""
    it = iter(batches)
    trainer._train_step(next(it))
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._train_step(next(it))
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="data.num_workers (the upper bound)")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--ways", nargs="+", default=["bare", "bare-1t", "pipeline", "fp32", "before", "device"],
                    choices=["bare", "bare-1t", "pipeline", "inline", "fp32", "per-image", "before", "naive",
                             "device", "device-1t"])
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loader_overhead_"))
    (tmp / "tiny_vit.json").write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(tmp / "tiny_vit.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny_vit", pretrained=None).state_dict(), tmp / "tiny_vit.pt")
    cfg = resolve("embedded", sets=[
        "data.subsample_per_class=40", "data.labels_per_class=4", "data.image_size=32", "data.resize=32",
        "data.crop_padding=4", f"data.num_workers={args.workers}", "model.backbone=tiny_vit",
        f"model.pretrained={tmp / 'tiny_vit.pt'}", "model.peft=vpt_deep", "model.vpt_tokens=2",
        "run.feature_cache=false", "algorithm.name=finessl", "optim.batch_size=8", "run.progress=false",
        "run.epochs=1000", "run.steps_per_epoch=100"] + args.set)
    trainer = Trainer(cfg, None)
    exp, cores = trainer.exp, available_cores()
    plan = worker_plan(cfg.data.num_workers)
    n = args.steps + 1
    u8 = build_transforms(cfg.data, exp.transforms.mean, exp.transforms.std, uint8=True)
    images = exp.bundle.train.images

    def source(transforms=u8):
        return ImageBatches(images, exp.split_view, transforms, 0, n)

    before = build_transforms(cfg.data, exp.transforms.mean, exp.transforms.std)
    before.weak, before.strong = (T.Compose([T.RandomCrop(t.size, padding=t.padding, padding_mode="reflect")
                                             if isinstance(t, ReflectRandomCrop) else t for t in c.transforms])
                                  for c in (before.weak, before.strong))
    per_image = replace(u8, weak=T.Compose(list(u8.weak.transforms)), strong=T.Compose(list(u8.strong.transforms)))
    assert per_image.batch_maker(per_image.weak) is None and u8.batch_maker(u8.weak) is not None
    ready = [source()[k] for k in range(n)]  # (a map-style dataset of unbounded index: no list())
    on_dev = build_transforms(replace(cfg.resolved().data, strong_aug="randaugment_mc", views="device"),
                              exp.transforms.mean, exp.transforms.std, uint8=True, device_views=True)
    dev_source = source(on_dev)  # one source for all blocks, as a run keeps one (0 workers: the training process)
    for k in range(n):
        dev_source[k]  # its padded-image cache warm, as after a run's first pass over the images

    def loader(workers: int, transforms=u8):
        return torch.utils.data.DataLoader(source(transforms), batch_size=None, num_workers=workers,
                                           worker_init_fn=ignore_stop_signals if workers else None)

    def with_threads(k: int, f):
        torch.set_num_threads(k)
        return f()

    ways = {
        "bare": lambda: with_threads(cores, lambda: timed_steps(trainer, ready, args.steps)),
        "bare-1t": lambda: with_threads(plan.threads, lambda: timed_steps(trainer, ready, args.steps)),
        "pipeline": lambda: with_threads(exp.intra_op_threads or cores,
                                         lambda: timed_steps(trainer, exp.batches(0, n), args.steps)),
        "inline": lambda: with_threads(cores, lambda: timed_steps(trainer, loader(0), args.steps)),
        "fp32": lambda: with_threads(exp.intra_op_threads or cores,
                                     lambda: timed_steps(trainer, loader(plan.workers, exp.transforms), args.steps)),
        "per-image": lambda: with_threads(exp.intra_op_threads or cores, lambda: timed_steps(
            trainer, loader(plan.workers, per_image), args.steps)),
        "before": lambda: with_threads(exp.intra_op_threads or cores, lambda: timed_steps(
            trainer, torch.utils.data.DataLoader(Before(images, exp.split_view, before, 0, n), batch_size=None,
                                                 num_workers=plan.workers, worker_init_fn=ignore_stop_signals
                                                 if plan.workers else None), args.steps)),
        "naive": lambda: with_threads(cores, lambda: timed_steps(trainer, loader(cfg.data.num_workers), args.steps)),
        # data.views=device as build.py wires it: 0 workers, every core an intra-op thread
        "device": lambda: with_threads(cores, lambda: timed_steps(
            trainer, torch.utils.data.DataLoader(dev_source, batch_size=None, num_workers=0), args.steps)),
        "device-1t": lambda: with_threads(1, lambda: timed_steps(
            trainer, torch.utils.data.DataLoader(dev_source, batch_size=None, num_workers=0), args.steps)),
    }
    ways = {k: ways[k] for k in dict.fromkeys(["bare", "bare-1t"] + args.ways)}
    ms = {k: [] for k in ways}
    make, make_slow, make_dev = [], [], []
    mean, std = exp.transforms.mean, exp.transforms.std
    for _ in range(args.blocks):
        for k, f in ways.items():
            ms[k].append(f())
        torch.set_num_threads(1)
        t0 = time.process_time()
        for k in range(args.steps):  # (the warm source of the device way)
            dev_source[k].normalized(mean, std)
        make_dev.append((time.process_time() - t0) / args.steps * 1e3)
        t0 = time.perf_counter()
        src = source()
        for k in range(args.steps):
            src[k]
        make.append((time.perf_counter() - t0) / args.steps * 1e3)
        t0 = time.perf_counter()
        src = source(per_image)
        for k in range(args.steps):
            src[k]
        make_slow.append((time.perf_counter() - t0) / args.steps * 1e3)
    med = {k: statistics.median(v) for k, v in ms.items()}
    limit = min(med["bare"], med["bare-1t"])
    print(f"cores {cores}; data.num_workers={cfg.data.num_workers}; plan: {plan.workers} workers + "
          f"{plan.threads} intra-op threads; naive: {cfg.data.num_workers} workers + {cores} threads; "
          f"data.transport={cfg.data.transport}")
    print(f"{'way':10s} {'ms/step (median of blocks)':>28s} {'/ limit':>8s}   blocks")
    for k in ways:
        print(f"{k:10s} {med[k]:28.2f} {med[k] / limit:8.2f}   " + " ".join(f"{x:.1f}" for x in ms[k]))
    print(f"making one batch in-process (1 thread, no training): {statistics.median(make):.2f} ms "
          f"({' '.join(f'{x:.1f}' for x in make)}); image by image: {statistics.median(make_slow):.2f} ms "
          f"({' '.join(f'{x:.1f}' for x in make_slow)})")
    print(f"making one batch with data.views=device in-process (CPU time, 1 thread, gathering + views + "
          f"normalising): {statistics.median(make_dev):.2f} ms ({' '.join(f'{x:.1f}' for x in make_dev)})")
    if "pipeline" in med:
        print(f"target 1 (issue 13): pipeline / bare (the faster bare way) <= 1.25 -> {med['pipeline'] / limit:.2f}")
    if "device" in med:
        print(f"target 1 with data.views=device: device / bare <= 1.25 -> {med['device'] / limit:.2f}")
    if "device-1t" in med:
        print(f"data.views=device adds {med['device-1t'] - med['bare-1t']:.2f} ms to a 1-thread step "
              f"(device-1t / bare-1t = {med['device-1t'] / med['bare-1t']:.2f})")


if __name__ == "__main__":
    main()
