"""Issue 13, target 6: K head-level runs differing only in seed, trained stacked (finessl_lab/stacked.py) vs one
after another (target: >= 3x the throughput of 9 sequential runs on 2 cores, identical results).

Each way is what a user gets from one call (the feature cache is on disk already; no run directory): sequential =
``train(cfg)`` per run (each builds its own Experiment: data set, backbone, feature cache, split, heads);
stacked = ``train_stacked(cfgs)`` (data set, backbone and feature cache loaded once, each run's split and heads
from its seed). Both train every step and evaluate every epoch. Blocks alternate (sequential, stacked, sequential, ...)
so that load on a shared machine hits both alike; the ratio is of the medians (also of the process CPU time,
all threads, which load from other processes inflates less). Each block also checks that the
stacked runs' test accuracies equal the sequential ones.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/stacked_runs.py [--runs 9] [--algorithm finessl] [--steps 50]
                                                               [--blocks 3] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from finessl_lab.presets import resolve
from finessl_lab.stacked import train_stacked
from finessl_lab.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--algorithm", default="finessl")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--steps", type=int, default=50, help="steps per run (one epoch)")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sets = [f"algorithm.name={a.algorithm}", "run.epochs=1", f"run.steps_per_epoch={a.steps}",
            "run.progress=false", *a.sets]
    cfgs = [resolve(a.preset, sets=sets + [f"run.seed={s}"]) for s in range(1, a.runs + 1)]
    times: dict[str, list[float]] = {"sequential": [], "stacked": []}
    cpu: dict[str, list[float]] = {"sequential": [], "stacked": []}  # process CPU time (all threads)
    diffs: list[str] = []
    for _ in range(a.blocks):
        t0, c0 = time.perf_counter(), time.process_time()
        seq = [train(c, progress=False)[0]["test_top1"] for c in cfgs]
        times["sequential"].append(time.perf_counter() - t0)
        cpu["sequential"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        st = [s["test_top1"] for s in train_stacked(cfgs, progress=False)]
        times["stacked"].append(time.perf_counter() - t0)
        cpu["stacked"].append(time.process_time() - c0)
        diffs += [] if st == seq else [f"DIFFERENT: {st} vs {seq}"]
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    same = "identical in every block" if not diffs else "; ".join(diffs)
    print(f"{a.preset} / {a.algorithm}: {a.runs} runs x {a.steps} steps (seeds 1-{a.runs}), {a.blocks} interleaved "
          f"blocks, torch threads {torch.get_num_threads()}; test top-1 of stacked vs sequential: {same}")
    print(f"{'':12}{'s (median)':>12}{'runs/min':>10}{'ms/run-step':>13}{'CPU s':>8}   blocks (s)")
    for k, v in med.items():
        print(f"{k:12}{v:12.2f}{60 * a.runs / v:10.1f}{1e3 * v / (a.runs * a.steps):13.2f}{med_cpu[k]:8.2f}   "
              f"{' '.join(f'{t:.2f}' for t in times[k])}")
    print(f"throughput stacked / sequential = {med['sequential'] / med['stacked']:.2f}x  (target >= 3x); "
          f"CPU time ratio {med_cpu['sequential'] / med_cpu['stacked']:.2f}x; "
          f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
