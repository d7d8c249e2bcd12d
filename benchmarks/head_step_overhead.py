"""Issue 13, target 2: the head-level training step of the library vs the same maths hand-written (<= 1.10).

Both ways train the embedded preset's two cosine heads (FineSSL by default) on the same ready-made feature
batches (gathered before timing, so the data pipeline is not timed: that is target 3), one intra-op thread:

  library  ``Trainer._train_step`` (algorithm.step, backward, SGD + scheduler, NaN check, log accumulation) and the
           built-in hooks' ``on_step`` (pseudo-label monitor): everything the loop does per step but fetch a batch
  bare     the same losses written inline on plain tensors (normalise once, one pace update, SGD)

Steps alternate in interleaved blocks (library, bare, library, bare, ...), so load on a shared machine hits both
alike; the ratio is of the per-way medians over blocks. Host syncs per step are counted with
``finessl_lab.syncs.count_host_syncs`` (calls that would sync on an accelerator).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/head_step_overhead.py [--algorithm finessl] [--blocks 31] [--steps 10]
        [--before REV]

``--before REV`` adds a third way, interleaved with the other two: the library at git revision REV (its
``finessl_lab`` package extracted with ``git archive`` and imported under another name), so "before" and "now"
come from one run.
"""
from __future__ import annotations

import argparse
import importlib
import io
import itertools
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

try:
    from finessl_lab.syncs import count_host_syncs
except ImportError:  # measuring an older checkout: take the counter from this one
    import importlib.util

    spec = importlib.util.spec_from_file_location("syncs", Path(__file__).parents[1] / "finessl_lab" / "syncs.py")
    _m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_m)
    count_host_syncs = _m.count_host_syncs


class Bare:
    """FineSSL's official step (margins from the pace before the batch, psi weights, smoothed aux CE over the
    masked rows) on raw tensors; FixMatch = the masked CE alone."""

    def __init__(self, trainer: Trainer, algorithm: str):
        m, cfg = trainer.exp.model, trainer.cfg
        self.algorithm, self.o, self.th = algorithm, cfg.algorithm.finessl, cfg.algorithm.threshold
        self.params = [p.detach().clone().requires_grad_(True) for p in m.trainable_parameters()]
        names = [n for n, p in m.named_parameters() if p.requires_grad]
        self.p = dict(zip(names, self.params))
        self.log_main = m.main.scale_param == "log"
        self.opt = torch.optim.SGD([{"params": [p for p in self.params if p.ndim >= 2],
                                     "weight_decay": cfg.optim.weight_decay},
                                    {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}],
                                   lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
        from finessl_lab.trainer import lr_factor

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        n_u, self.c = len(trainer.exp.split.unlabeled), trainer.exp.num_classes
        self.slots = torch.full((n_u,), -1, dtype=torch.long)
        self.counts = torch.zeros(self.c, dtype=torch.long)

    def head(self, name):
        w = F.normalize(self.p[f"{name}.weight"], dim=-1)
        s = self.p.get(f"{name}.log_scale")
        return w, (s.exp() if s is not None else self.p[f"{name}.logit_scale"])

    def step(self, b) -> None:
        wm, sm = self.head("main")
        x, uw = F.normalize(b.x, dim=-1), F.normalize(b.u_weak, dim=-1)
        if self.algorithm != "fixmatch":  # (FixMatch reads no aux head)
            wa, sa = self.head("aux")
        with torch.no_grad():
            conf, pl = torch.softmax(sm * (uw @ wm.t()), 1).max(1)
            psi = torch.softmax(sa * (uw @ wa.t()), 1).max(1).values if self.algorithm != "fixmatch" else None
        mask = conf >= self.th
        if self.algorithm == "fixmatch":
            loss = F.cross_entropy(sm * (x @ wm.t()), b.y) + \
                (F.cross_entropy(sm * (F.normalize(b.u_strong1, dim=-1) @ wm.t()), pl, reduction="none") * mask).mean()
        else:
            us = F.normalize(torch.cat([b.u_strong1, b.u_strong2]), dim=-1)  # (FixMatch reads strong view 1 only)
            beta = self.counts.float() / self.counts.max().clamp_min(1)
            margin = (beta.max() - beta.min()) * self.o.alpha_base * (1 - beta) / (1 + beta)
            pl2, mask2, psi2 = torch.cat([pl, pl]), torch.cat([mask, mask]), torch.cat([psi, psi])
            not_x = torch.ones(len(b.y), self.c).scatter_(1, b.y[:, None], 0.0)
            not_u = torch.ones(len(pl2), self.c).scatter_(1, pl2[:, None], 0.0)
            lx = F.cross_entropy(sm * (x @ wm.t()) + margin[b.y, None] * not_x, b.y) + \
                F.cross_entropy(sa * (x @ wa.t()), b.y)
            lu = (F.cross_entropy(sm * (us @ wm.t()) + margin[pl2, None] * not_u, pl2, reduction="none") * psi2).mean()
            s = self.o.smoothing
            target = torch.full((len(pl2), self.c), s / (self.c - 1)).scatter_(1, pl2[:, None], 1 - s)
            per = -(target * F.log_softmax(sa * (us @ wa.t()), 1)).sum(1)
            laux = torch.where(mask2, per, 0.0).sum() / mask2.sum().clamp_min(1)
            loss = lx + self.o.gamma * lu + laux
            old = self.slots[b.u_index]
            new = torch.where(conf >= self.o.zeta, pl, old)
            self.counts.index_add_(0, old.clamp_min(0), -(old >= 0).long())
            self.counts.index_add_(0, new.clamp_min(0), (new >= 0).long())
            self.slots[b.u_index] = new
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()


def library_at(rev: str, sets: list[str]):
    """A Trainer of the library as it was at git revision ``rev`` (its package imported as finessl_lab_<rev>)."""
    root = Path(__file__).parents[1]
    tar = subprocess.run(["git", "archive", rev, "finessl_lab"], cwd=root, check=True, capture_output=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="head_step_before_"))
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(tmp, filter="data")
    name = "finessl_lab_" + "".join(c if c.isalnum() else "_" for c in rev)
    (tmp / "finessl_lab").rename(tmp / name)  # the package imports itself relatively: any name works
    sys.path.insert(0, str(tmp))
    old = importlib.import_module(f"{name}.trainer")
    cfg = importlib.import_module(f"{name}.presets").resolve("embedded", sets=sets)
    return old.Trainer(cfg, None, progress=False)


def stepper(trainer: Trainer):
    def library(b):
        record = trainer._train_step(b)
        trainer._call_hooks("on_step", record)
        trainer.step += 1
    trainer.algorithm.on_epoch_start(0)
    trainer.exp.model.train()
    return library


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--algorithm", default="finessl", choices=("finessl", "fixmatch"))
    ap.add_argument("--blocks", type=int, default=31)
    ap.add_argument("--steps", type=int, default=10, help="steps per block and way")
    ap.add_argument("--before", metavar="REV", help="also time the library at this git revision (interleaved)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # what the trainer uses for head-level training on CPU
    sets = [f"algorithm.name={a.algorithm}", "run.progress=false"]
    cfg = resolve(a.preset, sets=sets)
    trainer = Trainer(cfg, None, progress=False)
    batches = list(itertools.islice(trainer.exp.batches(0, a.steps), a.steps))
    bare = Bare(trainer, a.algorithm)
    ways = {"library": stepper(trainer), "bare": bare.step}
    if a.before:
        ways["before"] = stepper(library_at(a.before, sets))  # same batches: Batch is a plain dataclass of tensors
    syncs = {}
    for name, fn in ways.items():  # warm-up + sync count of one step
        for b in batches[:3]:
            fn(b)
        with count_host_syncs() as s:
            fn(batches[3])
        syncs[name] = s
    times: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}  # this thread's CPU time: not counting time descheduled
    for _ in range(a.blocks):
        for name, fn in ways.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for b in batches:
                fn(b)
            cpu[name].append((time.thread_time() - c0) / len(batches))
            times[name].append((time.perf_counter() - t0) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{a.preset} / {a.algorithm}: batch {cfg.optim.batch_size} + {cfg.optim.mu * cfg.optim.batch_size} unlabeled, "
          f"{trainer.exp.num_classes} classes, feature dim {trainer.exp.model.main.in_dim}, {a.blocks} interleaved "
          f"blocks x {a.steps} steps, 1 thread")
    print(f"{'':10}{'ms/step (median)':>18}{'fastest block':>16}{'/ bare':>8}{'CPU ms/step':>13}{'/ bare':>8}"
          f"{'host syncs/step':>18}")
    for k in ways:
        print(f"{k:10}{1e3 * med[k]:18.3f}{1e3 * min(times[k]):16.3f}{med[k] / med['bare']:8.3f}"
              f"{1e3 * cmed[k]:13.3f}{cmed[k] / cmed['bare']:8.3f}{syncs[k].count:18d}")
    ratios = [x / y for x, y in zip(times["library"], times["bare"])]
    print(f"per-block ratios library/bare: median {statistics.median(ratios):.3f}, quartiles "
          f"{statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}")
    # the mean counts work done once every few steps (the pseudo-label monitor counts every 64 steps), which a
    # median over blocks of 10 steps may skip
    mean_cpu = {k: statistics.fmean(v) for k, v in cpu.items()}
    print(f"CPU time, mean over blocks: library / bare = {mean_cpu['library'] / mean_cpu['bare']:.3f}"
          + (f", before / bare = {mean_cpu['before'] / mean_cpu['bare']:.3f}" if "before" in cpu else ""))
    print(f"library / bare = {med['library'] / med['bare']:.3f}  (target <= 1.10)")
    if syncs["library"].count:
        print("library syncs:", syncs["library"].report())


if __name__ == "__main__":
    main()
