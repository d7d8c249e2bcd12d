"""Several algorithms x seeds on one setting -> a tidy per-run table and a mean/spread summary.

Runs go to ``out/<algorithm>/seed<N>/``; a finished run (summary.json with the same config) is reused, an
unfinished one (checkpoint.pt) is resumed, so an interrupted comparison continues where it stopped. A run
directory holding a run of a *different* config is refused before anything runs (unless ``overwrite``).
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd

from . import io
from .config import Config, describe_diff, diff, validate
from .errors import UserError, check_type
from .rundir import CHECKPOINT, CONFIG, SUMMARY, held_run_files
from .trainer import RESUME_IGNORED, train


def _stored_config(run_dir: Path) -> Config | None:
    if (run_dir / CONFIG).is_file():
        return Config.from_yaml(run_dir / CONFIG)
    if (run_dir / CHECKPOINT).is_file():
        return Config.from_dict(io.load_checkpoint(run_dir / CHECKPOINT)["config"])
    return None


def _plan(run_dir: Path, cfg: Config, overwrite: bool) -> str:
    """'fresh', 'reuse' or 'resume' for one run directory; a different run there is a UserError."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {str(run_dir)!r} is a file; valid: a new --out directory")
    held = held_run_files(run_dir)
    if overwrite or not held:
        return "fresh"
    stored = _stored_config(run_dir)
    changed = diff(stored, cfg, ignore=RESUME_IGNORED) if stored is not None else ["(no config)"]
    if changed:
        details = describe_diff(stored, cfg, changed) if stored is not None else "its config is missing"
        raise UserError(f"{str(run_dir)!r} already holds a run of a different config ({details}); valid: a new --out "
                        "directory, or --overwrite (Python: overwrite=True) to redo every run")
    if (run_dir / SUMMARY).is_file():
        return "reuse"
    return "resume" if (run_dir / CHECKPOINT).is_file() else "fresh"


def _run_one(cfg_dict: dict, run_dir: str, plan: str, threads: int) -> dict:
    """One run in a pool process (``compare(jobs>1)``): train or resume it quietly; its summary."""
    import torch

    torch.set_num_threads(threads)  # the pool's processes share the cores
    summary, _ = train(Config.from_dict(cfg_dict), Path(run_dir), resume=plan == "resume", progress=False,
                       overwrite=plan == "fresh")
    return summary


def _run_pool(todo: list, jobs: int, progress: bool | None) -> dict:
    """Train ``todo`` [(index, cfg, run_dir, plan)] in ``jobs`` spawned processes; {index: summary}. Progress is
    one bar over runs (each run's own bar is off). Runs are independent (own directory, own seed), and a run's
    result does not depend on the process it trains in, so the table equals the sequential one."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from .data.loading import available_cores
    from .progress import progress_bar

    threads = max(1, available_cores() // jobs)
    done: dict = {}
    bar = progress_bar(total=len(todo), desc=f"compare ({jobs} jobs)", unit="run", disable=progress is False)
    # spawn, not fork: forking a process that already ran torch ops can deadlock its thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, c.to_dict(), str(d), plan, threads): i for i, c, d, plan in todo}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for f in finished:
                    done[futures[f]] = f.result()  # a failed run re-raises here; the others are cancelled
                    bar.update(1)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
    return done


def _run_stacked(todo: list, progress: bool | None) -> dict:
    """``compare(stack=True)``: the fresh runs of each algorithm train together (finessl_lab/stacked.py) when they
    can; the others (resumed runs, algorithms without ``stack_state``, image mode) are left to the caller.
    {index: summary} of the stacked ones."""
    from .stacked import StackedRuns, build_experiments, stackable
    from .trainer import Trainer

    groups: dict = {}
    for i, c, d, plan in todo:
        if plan == "fresh":
            groups.setdefault(c.algorithm.name, []).append((i, c, d))
    done = {}
    for runs in groups.values():
        if len(runs) < 2:
            continue
        exps = build_experiments([c for _, c, _ in runs], progress=False)  # data and feature cache loaded once
        trainers = [Trainer(c, d, progress=False, overwrite=True, experiment=e) for (_, c, d), e in zip(runs, exps)]
        if stackable(trainers) is not None:
            continue
        for (i, _, _), summary in zip(runs, StackedRuns(trainers).fit()):
            done[i] = summary
    return done


def compare(cfg: Config, algorithms: list[str], seeds: list[int], out: str | Path, overwrite: bool = False,
            progress: bool | None = None, jobs: int = 1, stack: bool = False) -> pd.DataFrame:
    """Train (or reuse / resume) every algorithm x seed run under ``out``; ``jobs`` > 1 trains that many runs at
    once in separate processes (same table as ``jobs=1``, the cores shared between them). ``stack=True`` trains
    the seeds of each head-level algorithm together (finessl_lab/stacked.py: same results as one by one, each run
    in its own directory); runs that cannot stack train as usual."""
    validate(cfg)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise UserError(f"jobs={jobs!r} is not valid; valid: an integer from 1 to 64")
    check_type("algorithms", algorithms, (list, tuple), "a list of algorithm names, e.g. ['fixmatch', 'finessl']")
    check_type("seeds", seeds, (list, tuple), "a list of non-negative integers, e.g. [1, 2, 3]")
    if not algorithms or not seeds:
        raise UserError(f"algorithms={list(algorithms)!r} and seeds={list(seeds)!r} must both be non-empty")
    for i, a in enumerate(algorithms):
        check_type(f"algorithms[{i}]", a, str, "an algorithm name such as 'finessl'")
    for i, s in enumerate(seeds):
        check_type(f"seeds[{i}]", s, int, "a non-negative integer")
    check_type("out", out, (str, os.PathLike), "a directory path")
    check_type("overwrite", overwrite, bool, "True or False")
    check_type("stack", stack, bool, "True or False")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out {str(out)!r} is a file; valid: a new or existing comparison directory")
    algorithms, seeds = list(dict.fromkeys(algorithms)), list(dict.fromkeys(seeds))
    configs = []
    for alg in algorithms:
        for seed in seeds:
            c = copy.deepcopy(cfg)
            c.algorithm.name, c.run.seed = alg, seed
            configs.append(c.validate())  # every name and value checked before the first run starts
    plans = [(c, out / c.algorithm.name / f"seed{c.run.seed}") for c in configs]
    plans = [(c, d, _plan(d, c, overwrite)) for c, d in plans]  # every directory checked before the first run
    todo = [(i, c, d, plan) for i, (c, d, plan) in enumerate(plans) if plan != "reuse"]
    pooled = _run_stacked(todo, progress) if stack else {}
    todo = [r for r in todo if r[0] not in pooled]
    pooled.update(_run_pool(todo, min(jobs, len(todo)), progress) if jobs > 1 and len(todo) > 1 else {})
    rows = []
    for i, (c, run_dir, plan) in enumerate(plans):
        if plan == "reuse":
            summary = json.loads((run_dir / SUMMARY).read_text())
        elif i in pooled:
            summary = pooled[i]
        else:
            summary, _ = train(c, run_dir, resume=plan == "resume", progress=progress, overwrite=plan == "fresh")
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
