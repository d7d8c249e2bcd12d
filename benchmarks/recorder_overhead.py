"""Cost of the recorders (run.record=true) in feature-cache mode: the same training with recording off and on,
side by side, on one reused Experiment (so data loading is not timed).

Timed: the whole ``Trainer.fit()`` into a temporary run directory, i.e. every step, the per-epoch evaluation,
the recorders' extra per-epoch test prediction of both heads, checkpoints (which then hold the recorders'
state) and writing records/*.parquet. Runs alternate (off, on, off, on, ...) so that load on a shared machine
hits both alike; the median per-step time of each is reported. Target (issue 8): <= 5 % with the default window
(every step of the last epoch).

    .venv/bin/python benchmarks/recorder_overhead.py [--preset embedded] [--algorithm finessl] [--repeats 3]
                                                      [--set run.epochs=10 ...]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from finessl_lab.build import build_experiment
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer


def timed_fit(cfg, exp, out: Path) -> float:
    trainer = Trainer(cfg, out, experiment=exp, progress=False)
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--algorithm", default="finessl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    base = resolve(a.preset, sets=[f"algorithm.name={a.algorithm}", "run.progress=false", *a.sets])
    if not base.run.feature_cache:
        raise SystemExit("this benchmark measures feature-cache mode; use a preset with run.feature_cache=true")
    on = copy.deepcopy(base)
    on.run.record = True
    exp = build_experiment(base, progress=False)
    times: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, cfg in (("off", base), ("on", on)):
                times[name].append(timed_fit(cfg, exp, Path(tmp) / f"{name}{r}"))
        size = sum(p.stat().st_size for p in (Path(tmp) / "on0" / "records").iterdir())
    steps = base.total_steps
    off, rec = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"{a.preset} / {a.algorithm}: {steps} steps ({base.run.epochs} epochs x {base.run.steps_per_epoch}), "
          f"feature cache, device {exp.device}, {a.repeats} alternating repeats")
    print(f"{'':18}{'recording off':>16}{'recording on':>16}")
    print(f"{'ms / step (median)':18}{1e3 * off / steps:16.3f}{1e3 * rec / steps:16.3f}")
    print(f"{'all runs (s)':18}{' '.join(f'{t:.2f}' for t in times['off']):>16}"
          f"{' '.join(f'{t:.2f}' for t in times['on']):>16}")
    print(f"overhead: {100 * (rec / off - 1):+.1f} %  (target <= 5 %); records written: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
