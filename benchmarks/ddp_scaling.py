"""One process vs N processes under torchrun (gloo on CPU, NCCL on GPUs) for the same run and global batch.

Runs ``python -m finessl_lab train`` once in one process and once as ``torchrun --nproc_per_node=N -m finessl_lab
train`` (same preset, same --set items), alternating ``--blocks`` times, and prints the training-loop time per
step (summary.json's wall_time_s, so process start-up and the feature-cache load are excluded), the whole command's
wall time, the final test top-1 of each, and the ratios.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ddp_scaling.py [--nproc 2] [--steps 300] [--blocks 2] \
        [--preset embedded] [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(nproc: int, out: Path, preset: str, sets: list[str]) -> tuple[float, float, float]:
    args = ["-m", "finessl_lab", "train", "--preset", preset, "--out", str(out)] + sum((["--set", s] for s in sets), [])
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}"] + args
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stdout[-2000:] + p.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    return summary["wall_time_s"] / summary["steps"] * 1e3, wall, summary["test_top1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    sets = [f"run.max_steps={a.steps}", f"run.steps_per_epoch={a.steps}", "run.epochs=1", "run.progress=false",
            "algorithm.name=finessl"] + a.set
    res: dict[int, list] = {1: [], a.nproc: []}
    with tempfile.TemporaryDirectory() as tmp:
        for b in range(a.blocks):
            for n in (1, a.nproc):
                res[n].append(run(n, Path(tmp) / f"{n}-{b}", a.preset, sets))
    print(f"{a.preset}, FineSSL, {a.steps} steps, cores: {os.cpu_count()}, blocks: {a.blocks} (medians)")
    print(f"{'processes':>10} {'ms/step':>9} {'command s':>10} {'test top-1':>11}")
    med = {}
    for n, rows in res.items():
        med[n] = [statistics.median(r[i] for r in rows) for i in range(2)]
        tops = sorted({r[2] for r in rows})
        print(f"{n:>10} {med[n][0]:>9.2f} {med[n][1]:>10.1f} {', '.join(f'{t:.2f}' for t in tops):>11}")
    print(f"ratio {a.nproc}/1: ms/step {med[a.nproc][0] / med[1][0]:.2f}, command {med[a.nproc][1] / med[1][1]:.2f}")


if __name__ == "__main__":
    main()
