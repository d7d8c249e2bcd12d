"""Cost of the recorders (run.record=true) in feature-cache mode: the same training with recording off and on,
side by side, on one reused Experiment (so data loading is not timed).

Timed: the whole ``Trainer.fit()`` into a temporary run directory, i.e. every step, the per-epoch evaluation,
the recorders' extra per-epoch test prediction of both heads, checkpoints (which then hold the recorders'
state) and writing records/*.parquet. Runs alternate (off, on, off, on, ...) so that load on a shared machine
hits both alike; the fastest run of each is compared. Because wall clock on a shared machine is noisy, the script
also times the recorder hooks themselves inside each recording run (time in the hooks / the rest of that run),
which the load affects alike. Target (issue 8): <= 5 % with the default window (every step of the last epoch).

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


class Timed:
    """Wraps a hook and adds the time spent in each of its methods to ``clock`` (same process, same load)."""

    def __init__(self, hook, clock: list):
        self.hook, self.clock = hook, clock

    def __getattr__(self, name):
        attr = getattr(self.hook, name)
        if not callable(attr) or name not in ("on_train_start", "on_step", "on_epoch_end", "on_train_end",
                                              "state_dict", "load_state_dict"):
            return attr

        def timed(*args):
            t0 = time.perf_counter()
            try:
                return attr(*args)
            finally:
                self.clock[0] += time.perf_counter() - t0
        return timed


def timed_fit(cfg, exp, out: Path) -> tuple[float, float]:
    """(wall time of fit, time spent inside the recorder hooks, including their state in checkpoints)."""
    trainer = Trainer(cfg, out, experiment=exp, progress=False)
    clock = [0.0]
    trainer.hooks = [Timed(h, clock) if h.name.startswith("record_") else h for h in trainer.hooks]
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0, clock[0]


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
    wall: dict[str, list[float]] = {"off": [], "on": []}
    inside: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, cfg in (("off", base), ("on", on)):
                t, h = timed_fit(cfg, exp, Path(tmp) / f"{name}{r}")
                wall[name].append(t)
                if name == "on":
                    inside.append(h / (t - h))
        size = sum(p.stat().st_size for p in (Path(tmp) / "on0" / "records").iterdir())
    steps = base.total_steps
    off, rec = min(wall["off"]), min(wall["on"])
    print(f"{a.preset} / {a.algorithm}: {steps} steps ({base.run.epochs} epochs x {base.run.steps_per_epoch}), "
          f"feature cache, device {exp.device}, {a.repeats} alternating repeats")
    print(f"{'':28}{'recording off':>16}{'recording on':>16}")
    print(f"{'ms / step (fastest run)':28}{1e3 * off / steps:16.3f}{1e3 * rec / steps:16.3f}")
    for r in range(a.repeats):
        print(f"{f'run {r + 1} (s)':28}{wall['off'][r]:16.2f}{wall['on'][r]:16.2f}")
    print(f"wall-clock overhead (fastest on / fastest off - 1): {100 * (rec / off - 1):+.1f} %")
    print(f"time inside the recorders / rest of the same run: {', '.join(f'{100 * x:.2f} %' for x in inside)} "
          f"(median {100 * statistics.median(inside):.2f} %; target <= 5 %); records written: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
