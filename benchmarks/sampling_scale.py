"""Head-level step cost vs the size of the unlabeled set (issue 13, target 3: 1.28M slots within 1.2x of 5k).

A synthetic feature bank (``--dim`` features per image, fp16, ``--views`` cached weak and strong views; small so
that 1.28M slots fit in memory: 1.28M x 16 x 2 bytes = 41 MB per view) stands in for the cached features of an
ImageNet-sized unlabeled set. For each size the script builds an Experiment exactly as feature-cache mode does
(``FeatureBatches`` over a ``SplitView``, ``build_model`` heads, the configured algorithm with its per-sample state
sized to the unlabeled set, the hooks the Trainer installs) and times the whole head-level step as ``Trainer.fit``
runs it: draw the batch (sampling, view choice, gather), ``_train_step`` (forward, loss, backward, SGD) and the
``on_step`` hooks (pseudo-label monitor, recorders when ``run.record=true``). Sizes alternate in blocks (load on
the shared machine hits each alike); medians of the blocks are compared. One intra-op thread, as training uses
in feature-cache mode on CPU. ``--uncached`` turns the permutation cache off (the pre-fix sampler: all N
positions permuted every step), for the before/after comparison.

    .venv/bin/python benchmarks/sampling_scale.py [--sizes 5000 1280000] [--steps 200] [--blocks 5]
                                                  [--uncached] [--set algorithm.name=flexmatch ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from finessl_lab.build import Experiment, unlabeled_batch_size
from finessl_lab.data.batches import FeatureBatches, SplitView
try:
    from finessl_lab.data.sampling import PERMUTATIONS
except ImportError:  # the code before issue 13's fix (to time it, run this script with PYTHONPATH at that commit)
    PERMUTATIONS = None
from finessl_lab.data.splits import Split
from finessl_lab.models import build_model
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer


def synthetic_experiment(cfg, n_unlabeled: int, n_labeled: int, classes: int, dim: int,
                         views: int) -> tuple[Experiment, FeatureBatches]:
    """An Experiment over ``n_labeled + n_unlabeled`` synthetic training images (labeled ones first; the
    unlabeled set is the rest), features = class mean + noise."""
    g = torch.Generator().manual_seed(0)
    n = n_labeled + n_unlabeled
    targets = np.concatenate([np.arange(n_labeled) % classes,
                              np.random.default_rng(0).integers(classes, size=n_unlabeled)]).astype(np.int64)
    means = torch.randn(classes, dim, generator=g)
    t = torch.as_tensor(targets)

    def bank() -> torch.Tensor:
        out = torch.empty(views, n, dim, dtype=torch.float16)
        for k in range(views):
            out[k] = (means[t] + torch.randn(n, dim, generator=g)).half()
        return out

    weak, strong = bank(), bank()
    split = Split(labeled=np.arange(n_labeled), unlabeled=np.arange(n_labeled, n), val=np.empty(0, dtype=np.int64))
    view = SplitView(labeled=split.labeled, unlabeled=split.unlabeled, targets=targets, ood=np.zeros(n, dtype=bool),
                     batch_size=cfg.optim.batch_size, unlabeled_batch=unlabeled_batch_size(cfg, True),
                     seed=cfg.run.seed, labeled_stream=cfg.data.labeled_stream, steps_per_epoch=cfg.run.steps_per_epoch)
    device = torch.device("cpu")
    model = build_model(cfg.model, classes, [str(c) for c in range(classes)], feature_dim=dim,
                        labeled_features=weak[0, :n_labeled].float(), labeled_targets=t[:n_labeled],
                        generator=torch.Generator().manual_seed(cfg.run.seed))
    source = FeatureBatches(weak, strong, view, device)
    exp = Experiment(cfg, device, "fp32", None, split, view, model, lambda a, b: (source[s] for s in range(a, b)))
    return exp, source


def timed(trainer: Trainer, source: FeatureBatches, first: int, steps: int) -> tuple[float, float]:
    """(ms per whole step, ms per batch draw) over steps first .. first + steps - 1."""
    draw = 0.0
    t0 = time.perf_counter()
    for s in range(first, first + steps):
        t1 = time.perf_counter()
        batch = source[s]
        draw += time.perf_counter() - t1
        record = trainer._train_step(batch)
        if record is not None:
            trainer._call_hooks("on_step", record)
        trainer.step = s + 1
    return (time.perf_counter() - t0) / steps * 1e3, draw / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 1_280_000])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per block")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--views", type=int, default=2, help="cached views per image (weak and strong each)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labeled", type=int, default=40)
    ap.add_argument("--uncached", action="store_true", help="pre-fix sampler: permute all N positions every step")
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args()
    if args.uncached and PERMUTATIONS is not None:
        PERMUTATIONS.max_entries = 0
    torch.set_num_threads(1)
    cfg = resolve("embedded", sets=["run.progress=false", "run.epochs=1000", "run.steps_per_epoch=100000"] + args.set)
    runs = {}
    for n in args.sizes:
        exp, source = synthetic_experiment(cfg, n, args.labeled, args.classes, args.dim, args.views)
        trainer = Trainer(cfg, None, experiment=exp, progress=False)
        timed(trainer, source, 0, 3)  # warm-up: first pass permutations, allocator
        runs[n] = (trainer, source)
    total = {n: [] for n in runs}
    draw = {n: [] for n in runs}
    first = 3
    for _ in range(args.blocks):
        for n, (trainer, source) in runs.items():
            a, b = timed(trainer, source, first, args.steps)
            total[n].append(a)
            draw[n].append(b)
        first += args.steps
    base = args.sizes[0]
    med = {n: statistics.median(v) for n, v in total.items()}
    medd = {n: statistics.median(v) for n, v in draw.items()}
    print(f"algorithm {cfg.algorithm.name}; batch {cfg.optim.batch_size} labeled + "
          f"{unlabeled_batch_size(cfg, True)} unlabeled; dim {args.dim}; {args.views} views; 1 thread; "
          f"sampler: {'cached pass permutations' if PERMUTATIONS is not None and not args.uncached else 'uncached'}")
    print(f"{'unlabeled slots':>16s} {'ms/step':>9s} {'/ ' + str(base):>9s} {'draw ms':>9s}   blocks (ms/step)")
    for n in runs:
        print(f"{n:16d} {med[n]:9.3f} {med[n] / med[base]:9.2f} {medd[n]:9.3f}   "
              + " ".join(f"{x:.2f}" for x in total[n]))
    print(f"target 3 (issue 13): ms/step at {args.sizes[-1]} / at {base} <= 1.2 -> {med[args.sizes[-1]] / med[base]:.2f}")


if __name__ == "__main__":
    main()
