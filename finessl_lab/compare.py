"""Several algorithms x seeds on one setting -> a tidy per-run table and a mean/spread summary.

Runs go to ``out/<algorithm>/seed<N>/``; a finished run (summary.json with the same config) is reused, an
unfinished one (checkpoint.pt) is resumed, so an interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd

from . import io
from .config import Config, diff
from .trainer import CHECKPOINT, CONFIG, SUMMARY, RESUME_IGNORED, train


def _finished(run_dir: Path, cfg: Config) -> dict | None:
    if not (run_dir / SUMMARY).is_file() or not (run_dir / CONFIG).is_file():
        return None
    if diff(Config.from_yaml(run_dir / CONFIG), cfg, ignore=RESUME_IGNORED):
        return None
    return json.loads((run_dir / SUMMARY).read_text())


def compare(cfg: Config, algorithms: list[str], seeds: list[int], out: str | Path, overwrite: bool = False,
            progress: bool | None = None) -> pd.DataFrame:
    from .cli import check_out_dir

    out = Path(out)
    configs = []
    for alg in algorithms:
        for seed in seeds:
            c = copy.deepcopy(cfg)
            c.algorithm.name, c.run.seed = alg, seed
            configs.append(c.validate())  # every name and value checked before the first run starts
    rows = []
    for c in configs:
        run_dir = out / c.algorithm.name / f"seed{c.run.seed}"
        summary = None if overwrite else _finished(run_dir, c)
        if summary is None:
            resume = not overwrite and (run_dir / CHECKPOINT).is_file()
            if not resume:
                check_out_dir(run_dir, overwrite=True)
            summary, _ = train(c, run_dir, resume=resume, progress=progress)
        rows.append({k: summary.get(k) for k in ("algorithm", "seed", "test_top1", "steps", "dataset",
                                                  "labels_per_class", "backbone", "pretrained", "wall_time_s")})
    results = pd.DataFrame(rows)
    io.write_csv(out / "results.csv", results)
    table = summarize(results, algorithms)
    io.write_csv(out / "summary.csv", table)
    return table


def summarize(results: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Mean, sample standard deviation, min and max of test top-1 per algorithm."""
    g = results.groupby("algorithm", sort=False)["test_top1"]
    table = pd.DataFrame({"test_top1_mean": g.mean(), "test_top1_std": g.std(ddof=1), "min": g.min(),
                          "max": g.max(), "runs": g.count()}).reset_index()
    if order:
        table["algorithm"] = pd.Categorical(table["algorithm"], [a for a in order if a in set(table["algorithm"])])
        table = table.sort_values("algorithm").reset_index(drop=True)
        table["algorithm"] = table["algorithm"].astype(str)
    return table.round(2)
