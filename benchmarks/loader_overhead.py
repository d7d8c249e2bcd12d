"""Image mode: the cost of our data pipeline (issue 13, target 1: step with the pipeline / bare step <= 1.25).

A tiny, randomly initialised open_clip ViT (2 layers, width 64, 32 px; a speed fixture, not a pretrained model)
with VPT-deep trains FineSSL on embedded MNIST digits. Three ways of feeding the same training step
(``Trainer._train_step``: forward of all views, loss, backward, optimizer step) are timed in interleaved blocks
(so load on a shared machine hits each alike), and the median per-step time of each is compared:

  bare      ready-made batches already in memory, torch threads = all cores (the limit)
  pipeline  our DataLoader as training uses it: workers and intra-op threads from data.loading.worker_plan
  naive     data.num_workers workers AND all cores as intra-op threads (the oversubscribed pre-fix setting)

Worker start-up is not timed (the first batch of each block is fetched before the clock starts).

    .venv/bin/python benchmarks/loader_overhead.py [--steps 20] [--blocks 3] [--workers 2] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from finessl_lab.data.batches import ImageBatches
from finessl_lab.data.features import ignore_stop_signals
from finessl_lab.data.loading import available_cores, worker_plan
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}


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
    source = ImageBatches(exp.bundle.train.images, exp.split_view, exp.transforms, 0, n)
    ready = [source[k] for k in range(n)]  # (a map-style dataset of unbounded index: no list())

    def bare():
        torch.set_num_threads(cores)
        return timed_steps(trainer, ready, args.steps)

    def pipeline():
        torch.set_num_threads(exp.intra_op_threads or cores)
        return timed_steps(trainer, exp.batches(0, n), args.steps)

    def naive():
        torch.set_num_threads(cores)
        w = cfg.data.num_workers
        loader = torch.utils.data.DataLoader(ImageBatches(exp.bundle.train.images, exp.split_view, exp.transforms,
                                                          0, n), batch_size=None, num_workers=w,
                                             worker_init_fn=ignore_stop_signals if w else None)
        return timed_steps(trainer, loader, args.steps)

    ways = {"bare": bare, "pipeline": pipeline, "naive": naive}
    ms = {k: [] for k in ways}
    for _ in range(args.blocks):
        for k, f in ways.items():
            ms[k].append(f())
    med = {k: statistics.median(v) for k, v in ms.items()}
    print(f"cores {cores}; data.num_workers={cfg.data.num_workers}; plan: {plan.workers} workers + "
          f"{plan.threads} intra-op threads; naive: {cfg.data.num_workers} workers + {cores} threads")
    print(f"{'way':10s} {'ms/step (median of blocks)':>28s} {'/ bare':>8s}   blocks")
    for k in ways:
        print(f"{k:10s} {med[k]:28.2f} {med[k] / med['bare']:8.2f}   " + " ".join(f"{x:.1f}" for x in ms[k]))
    print(f"target 1 (issue 13): pipeline / bare <= 1.25 -> {med['pipeline'] / med['bare']:.2f}")


if __name__ == "__main__":
    main()
