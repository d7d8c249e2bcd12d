"""Head-level training from the feature cache vs the same training from images, side by side.

Both runs use the embedded preset (frozen EfficientNet-Lite0, linear probe level) and the same algorithm code;
image mode augments and runs the backbone on 4 views every step, feature-cache mode gathers cached features.
Feature extraction for the cache is timed separately (it is paid once per backbone/dataset/transform).

    .venv/bin/python benchmarks/feature_cache_speedup.py [--steps 40] [--algorithm finessl]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer


def timed_fit(cfg) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    trainer = Trainer(cfg, None, progress=False)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = trainer.fit()
    return setup, time.perf_counter() - t1, summary["test_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--algorithm", default="finessl")
    ap.add_argument("--per-class", type=int, default=100, help="training digits per class")
    a = ap.parse_args()
    os.environ.setdefault("FINESSL_LAB_CACHE", tempfile.mkdtemp(prefix="finessl-bench-"))
    sets = [f"algorithm.name={a.algorithm}", f"run.max_steps={a.steps}", f"run.steps_per_epoch={a.steps}",
            f"data.subsample_per_class={a.per_class}", "data.num_workers=2"]
    setup_f, fit_f, acc_f = timed_fit(resolve("embedded", sets=sets))  # first call builds the cache
    _, fit_f2, _ = timed_fit(resolve("embedded", sets=sets))           # cache hit
    setup_i, fit_i, acc_i = timed_fit(resolve("embedded", sets=sets + ["run.feature_cache=false"]))
    print(f"{a.algorithm}, {a.steps} steps, batch 32 labeled + 128 unlabeled (x3 views), {a.per_class} digits/class")
    print(f"feature cache build (once): {setup_f:.1f} s")
    print(f"image mode:         {1e3 * fit_i / a.steps:8.2f} ms/step  (test top-1 {acc_i:.1f})")
    print(f"feature-cache mode: {1e3 * fit_f2 / a.steps:8.2f} ms/step  (test top-1 {acc_f:.1f})")
    print(f"speed-up per step: {fit_i / fit_f2:.0f}x")


if __name__ == "__main__":
    main()
