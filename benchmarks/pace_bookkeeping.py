"""Class-pace bookkeeping: our O(batch) incremental counts vs the official code's per-step recount.

The official FineSSL code keeps one slot per unlabeled sample and rebuilds a Counter over the whole array every
step (O(dataset)). finessl_lab.algorithms.bms.LearningPace updates counts from the batch only (O(batch)).
Both are run side by side on the same stream of predictions; the script checks they agree and prints the ratio.

    .venv/bin/python benchmarks/pace_bookkeeping.py [--unlabeled 50000] [--steps 300]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from finessl_lab.algorithms.bms import LearningPace


def official_style(slots: torch.Tensor, index, probs, zeta, num_classes):
    conf, pred = probs.max(1)
    slots[index] = torch.where(conf >= zeta, pred, torch.full_like(pred, -1))
    counter = Counter(slots.tolist())  # what the official code does every step
    return torch.tensor([counter.get(k, 0) for k in range(num_classes)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unlabeled", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    stream = [(torch.randint(0, a.unlabeled, (a.batch,), generator=g),
               torch.softmax(4 * torch.randn(a.batch, a.classes, generator=g), 1)) for _ in range(a.steps)]
    pace = LearningPace(a.unlabeled, a.classes, 0.7)
    t0 = time.perf_counter()
    for idx, p in stream:
        pace.update(idx, p)
    ours = time.perf_counter() - t0
    slots = torch.full((a.unlabeled,), -1, dtype=torch.long)
    t0 = time.perf_counter()
    for idx, p in stream:
        counts = official_style(slots, idx, p, 0.7, a.classes)
    theirs = time.perf_counter() - t0
    assert torch.equal(counts, pace.counts), "the two bookkeepings disagree"
    print(f"unlabeled={a.unlabeled} classes={a.classes} batch={a.batch} steps={a.steps}")
    print(f"incremental (ours): {1e3 * ours / a.steps:.3f} ms/step")
    print(f"full recount (official style): {1e3 * theirs / a.steps:.3f} ms/step")
    print(f"speed-up: {theirs / ours:.1f}x  (identical counts)")


if __name__ == "__main__":
    main()
