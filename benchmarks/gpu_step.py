"""Issue 13, target 7: the ``cifar100_n4`` FineSSL preset end to end on one GPU, data included (>= 15 steps/s on
one H100 with bf16 autocast; the paper's 15,000 steps in under 17 minutes).

Speed and correctness only: no weights or datasets can be downloaded where this runs, so the backbone is a
**randomly initialised** open_clip ViT-B/16 (saved to a local file and loaded through ``model.pretrained``, the
path users take with their own weights) and the data a generated image folder of random 32 px RGB images in
CIFAR-100's shape (100 classes; ``data.dataset=imagefolder``), which goes through the same decoding, resize to
224, crops, flips, RandAugmentMC and uint8 transport as CIFAR-100. Everything else is the preset: VPT-deep (50
tokens), batch 32, FineSSL, the optimizer and schedule, ``data.num_workers`` (override with ``--set``).

Ways, each timed over ``--steps`` steps after ``--warmup`` untimed ones (device synchronised before reading
the clock; medians of ``--blocks`` interleaved blocks):

  pipeline   ``Trainer._train_step`` over the experiment's own DataLoader (the training loop's data path)
  bare       the same step on ready-made batches already on the device (the limit without data)
  data       the DataLoader alone (batches per second it can deliver; no training)
  compiled   ``bare`` with the backbone compiled (``nn.Module.compile()``; with ``--compile``; compile time
             reported separately)

and a phase profile of the bare step (device synchronised between phases, so the phases add up to a little more
than the step): host->device copy + uint8 normalisation, forward (backbone + heads + FineSSL's losses under
autocast), backward, optimizer step; and the host syncs inside one step (``finessl_lab.syncs``).

    .venv/bin/python benchmarks/gpu_step.py                      # on a GPU machine: the target
    .venv/bin/python benchmarks/gpu_step.py --compile --set data.num_workers=8
    .venv/bin/python benchmarks/gpu_step.py --tiny --steps 3     # CPU smoke run (tiny random ViT, 32 px)
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from finessl_lab.presets import resolve
from finessl_lab.syncs import count_host_syncs
from finessl_lab.trainer import Trainer

TINY_VIT = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}
TARGET_STEPS_PER_S = 15.0


def image_folder(root: Path, classes: int, per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png: random 32 px RGB images (CIFAR-100's shape)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"class_{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, steps: int) -> float:
    """ms per call of ``fn`` over ``steps`` calls (device synchronised before and after)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3


def phases(trainer: Trainer, batch_cpu) -> dict[str, float]:
    """One bare step cut into phases, the device synchronised after each (ms): the step of Trainer._train_step."""
    from finessl_lab.algorithms.base import Heads, UnlabeledViews
    from finessl_lab.device import autocast, weight_dtype

    e, dev = trainer.exp, trainer.exp.device
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        sync(dev)
        now = time.perf_counter()
        out[name] = (now - t) * 1e3
        t = now

    b = batch_cpu.to(dev, non_blocking=True).normalized(e.transforms.mean, e.transforms.std)
    lap("copy + normalise")
    views = [b.x, b.u_weak, b.u_strong1, b.u_strong2]
    with autocast(dev, e.precision):
        feats = e.model.features(torch.cat(views).to(weight_dtype(e.precision))).split([len(v) for v in views])
        res = trainer.algorithm.step(Heads(e.model.main, e.model.aux), feats[0], b.y,
                                     UnlabeledViews(feats[1], [feats[2], feats[3]]), b.u_index)
    lap("forward (backbone + heads + loss)")
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(res.loss).backward()
    lap("backward")
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    lap("optimizer + schedule")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=50, help="generated training images per class (100 classes)")
    ap.add_argument("--compile", action="store_true", help="also time the bare step with the backbone compiled")
    ap.add_argument("--tiny", action="store_true", help="a tiny random ViT at 32 px (CPU smoke run), not ViT-B/16")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gpu_step_"))
    data = image_folder(tmp / "data", 100, args.per_class, 2)
    torch.manual_seed(0)
    if args.tiny:
        (tmp / "tiny_vit.json").write_text(json.dumps(TINY_VIT))
        open_clip.add_model_config(tmp / "tiny_vit.json")
        name, extra = "tiny_vit", ["data.image_size=32", "data.resize=32", "data.crop_padding=4",
                                   "model.vpt_tokens=2"]
    else:
        name, extra = "ViT-B-16", []
    weights = tmp / f"{name}_random_init.pt"
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), weights)
    cuda = torch.cuda.is_available()
    cfg = resolve("cifar100_n4", sets=[
        "data.dataset=imagefolder", f"data.root={data}", "data.download=false", f"model.backbone={name}",
        f"model.pretrained={weights}", f"run.precision={'bf16' if cuda else 'fp32'}", "run.progress=false",
        "run.feature_cache=false"] + extra + args.set)
    trainer = Trainer(cfg, tmp / "run")
    e, dev = trainer.exp, trainer.exp.device
    n = args.warmup + args.steps
    ready_cpu = list(iter(e.batches(0, min(n, 8))))  # a few distinct batches, cycled
    ready = [b.to(dev) for b in ready_cpu]
    per_step = sum(len(t) for t in (ready[0].x, ready[0].u_weak, ready[0].u_strong1, ready[0].u_strong2))

    def run_bare():
        k = iter(range(10 ** 9))
        return lambda: trainer._train_step(ready[next(k) % len(ready)])

    def pipeline() -> float:
        it = iter(e.batches(0, n))
        for _ in range(args.warmup):
            trainer._train_step(next(it))
        return timed(dev, lambda: trainer._train_step(next(it)), args.steps)

    def data_only() -> float:
        it = iter(e.batches(0, n))
        for _ in range(args.warmup):
            next(it)
        return timed(dev, lambda: next(it), args.steps)

    def bare() -> float:
        f = run_bare()
        for _ in range(args.warmup):
            f()
        return timed(dev, f, args.steps)

    ways = {"pipeline": pipeline, "bare": bare, "data": data_only}
    ms = {k: [] for k in ways}
    for _ in range(args.blocks):
        for k, f in ways.items():
            ms[k].append(f())
    prof = [phases(trainer, ready_cpu[i % len(ready_cpu)]) for i in range(args.blocks + 1)][1:]
    with count_host_syncs() as syncs:
        trainer._train_step(ready[0])
    if args.compile:
        from torch._dynamo.utils import counters
        t0 = time.perf_counter()
        e.model.backbone.compile()
        f = run_bare()
        f()
        sync(dev)
        compile_s = time.perf_counter() - t0
        ms["compiled"] = [bare() for _ in range(args.blocks)]

    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name_dev}; backbone {name} (random init); precision {e.precision}; {per_step} images per step "
          f"(batch {cfg.optim.batch_size}, mu {cfg.optim.mu}); data.num_workers={cfg.data.num_workers}")
    print(f"{'way':10s} {'ms/step':>9s} {'steps/s':>8s}   blocks (ms)")
    for k, v in ms.items():
        m = statistics.median(v)
        print(f"{k:10s} {m:9.2f} {1e3 / m:8.2f}   " + " ".join(f"{x:.1f}" for x in v))
    if args.compile:
        print(f"compile time (first compiled step included): {compile_s:.1f} s; graphs compiled: "
              f"{counters['stats']['unique_graphs']} (more than a few = recompilations or graph breaks)")
    print("bare step by phase (median ms, device synchronised between phases):")
    for k in prof[0]:
        print(f"  {k:36s} {statistics.median(p[k] for p in prof):8.2f}")
    print(f"host syncs in one step: {syncs.count}" + (f"\n{syncs.report()}" if syncs.count else ""))
    sps = 1e3 / statistics.median(ms["pipeline"])
    print(f"target 7 (issue 13): pipeline >= {TARGET_STEPS_PER_S:g} steps/s on one H100 with bf16 -> {sps:.2f} "
          f"steps/s{'' if dev.type == 'cuda' else ' (not a GPU: a smoke run, not the target)'}")


if __name__ == "__main__":
    main()
