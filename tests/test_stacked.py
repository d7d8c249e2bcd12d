"""Issue 13, target 6: head-level runs that differ only in seed / scalar hyper-parameters train stacked
(finessl_lab/stacked.py) with the results of sequential runs: the same test accuracy every epoch, losses within
1e-5, the same final weights within 1e-5 and the same algorithm state (FineSSL's pace slots and counts); each
stacked run writes a normal run directory that load_run reads and --resume continues."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from finessl_lab import io
from finessl_lab.compare import compare
from finessl_lab.errors import UserError
from finessl_lab.presets import resolve
from finessl_lab.build import build_experiment
from finessl_lab.stacked import StackedRuns, build_experiments, stackable, train_stacked
from finessl_lab.trainer import Trainer, _intra_op_threads, train

SMALL = ["data.subsample_per_class=20", "run.epochs=2", "run.steps_per_epoch=4", "run.progress=false"]
LOSS_TOL = 1e-5


def configs(algorithm, *extra):
    base = SMALL + [f"algorithm.name={algorithm}", *extra]
    return [resolve("embedded", sets=base + ["run.seed=1"]), resolve("embedded", sets=base + ["run.seed=2"]),
            resolve("embedded", sets=base + ["run.seed=3", "optim.lr=0.01"])]


@pytest.mark.parametrize("algorithm", ["supervised", "fixmatch", "finessl"])
def test_stacked_runs_equal_sequential_runs(tmp_path, algorithm):
    cfgs = configs(algorithm)
    stacked = train_stacked(cfgs, [tmp_path / f"s{k}" for k in range(3)])
    for k, c in enumerate(cfgs):
        summary, metrics = train(c, tmp_path / f"q{k}")
        assert stacked[k]["test_top1"] == summary["test_top1"] and stacked[k]["stacked_runs"] == 3
        other = pd.read_csv(tmp_path / f"s{k}" / "metrics.csv")
        assert other["test_top1"].tolist() == metrics["test_top1"].tolist()
        for col in [c for c in metrics.columns if c.startswith("loss")]:
            assert other[col].to_numpy() == pytest.approx(metrics[col].to_numpy(), abs=LOSS_TOL), col
        a, b = (io.load_checkpoint(tmp_path / d / "checkpoint.pt") for d in (f"s{k}", f"q{k}"))
        for name in b["model"]:
            torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-5)
        if algorithm == "finessl":
            assert torch.equal(a["algorithm"]["pace"]["slots"], b["algorithm"]["pace"]["slots"])
            assert torch.equal(a["algorithm"]["pace"]["counts"], b["algorithm"]["pace"]["counts"])
        assert a["step"] == b["step"] and a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


@pytest.mark.parametrize("bank", [True, False])
def test_runs_differing_in_algorithm_scalars_equal_sequential_runs(tmp_path, monkeypatch, bank):
    """lambda (smoothing), zeta and gamma differ: separate vmapped groups over one shared bank, still the
    sequential results (same seed for two of them, so they also share the split and the initial heads).
    bank=False: the path for banks too large to hold in fp32 (each run's rows gathered and normalised per step)."""
    if not bank:
        monkeypatch.setattr(StackedRuns, "_BANK_LIMIT", 0)
    base = SMALL + ["algorithm.name=finessl"]
    cfgs = [resolve("embedded", sets=base + ["run.seed=1", "algorithm.finessl.smoothing=0.2"]),
            resolve("embedded", sets=base + ["run.seed=1", "algorithm.finessl.zeta=0.5"]),
            resolve("embedded", sets=base + ["run.seed=2", "algorithm.finessl.gamma=1.0"]),
            resolve("embedded", sets=base + ["run.seed=2", "algorithm.finessl.gamma=1.0", "optim.lr=0.01"])]
    stacked = train_stacked(cfgs, [tmp_path / f"s{k}" for k in range(4)])
    for k, c in enumerate(cfgs):
        summary, metrics = train(c)
        assert stacked[k]["test_top1"] == summary["test_top1"]
        other = pd.read_csv(tmp_path / f"s{k}" / "metrics.csv")
        assert other["test_top1"].tolist() == metrics["test_top1"].tolist()
        for col in [c for c in metrics.columns if c.startswith("loss")]:
            assert other[col].to_numpy() == pytest.approx(metrics[col].to_numpy(), abs=LOSS_TOL), col


def test_a_shared_build_equals_each_runs_own_build():
    """build_experiments reuses the first run's data set and feature cache: every run's split, initial heads,
    evaluation sets and batches must be bit-identical to those build_experiment(cfg) gives it alone."""
    cfgs = configs("finessl") + [resolve("embedded", sets=SMALL + ["algorithm.name=finessl", "run.seed=1",
                                                                    "algorithm.finessl.zeta=0.5"])]
    shared = build_experiments(cfgs, progress=False)
    assert all(e.features is shared[0].features for e in shared)  # loaded once
    for c, e in zip(cfgs, shared):
        own = build_experiment(c, progress=False)
        for name in ("labeled", "unlabeled", "val"):
            assert np.array_equal(getattr(e.split, name), getattr(own.split, name)), name
        assert own.initial_state.keys() == e.initial_state.keys()
        for name, t in own.initial_state.items():
            assert torch.equal(e.initial_state[name], t), name
        assert own.eval_sets.keys() == e.eval_sets.keys()
        for name, s in own.eval_sets.items():
            assert torch.equal(e.eval_sets[name].inputs, s.inputs) and torch.equal(e.eval_sets[name].targets, s.targets)
        for a, b in zip(e.batches(0, 3), own.batches(0, 3)):
            for f in ("x", "y", "u_weak", "u_strong1", "u_strong2", "u_index", "u_true", "u_ood"):
                assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(shared[0].initial_state["main.weight"], shared[1].initial_state["main.weight"])


def test_the_stacked_bank_gives_each_run_its_own_rows():
    """A stacked step gathers run k's rows from one bank of unit rows (normalised once) by row numbers drawn by a
    FeatureBatches of row numbers: they must equal, bit for bit, the rows run k's own batches hold, normalised
    as the sequential step normalises them (CosineHead, one thread)."""
    cfgs = configs("finessl")
    exps = build_experiments(cfgs, progress=False)
    runs = StackedRuns([Trainer(c, None, experiment=e) for c, e in zip(cfgs, exps)])
    assert runs.bank is not None
    for k, e in enumerate(exps):
        for step, own in zip(range(3), e.batches(0, 3)):
            ids = runs.row_sources[k][step]
            assert torch.equal(ids.u_index, own.u_index) and torch.equal(ids.y, own.y)
            for f in ("x", "u_weak", "u_strong1", "u_strong2"):
                rows = runs.bank[getattr(ids, f).squeeze(-1).long()]
                with _intra_op_threads(1):
                    expect = torch.nn.functional.normalize(getattr(own, f).float(), dim=-1)
                assert torch.equal(rows, expect), f


def test_a_stacked_run_directory_resumes_like_a_sequential_one(tmp_path):
    cfgs = configs("finessl")
    train_stacked(cfgs[:2], [tmp_path / "a", tmp_path / "b"])
    longer = resolve("embedded", sets=SMALL + ["algorithm.name=finessl", "run.seed=1"])
    t = Trainer(longer, tmp_path / "a", resume=True)  # the run is complete: resuming trains nothing more
    assert t.step == longer.total_steps and t.fit()["test_top1"] == train(longer, tmp_path / "c")[0]["test_top1"]


def test_only_runs_differing_in_seed_or_scalars_stack():
    a = Trainer(resolve("embedded", sets=SMALL + ["algorithm.name=finessl"]), None)
    b = Trainer(resolve("embedded", sets=SMALL + ["algorithm.name=finessl", "run.seed=5", "optim.batch_size=16"]), None)
    assert "optim.batch_size" in stackable([a, b])
    c = Trainer(resolve("embedded", sets=SMALL + ["algorithm.name=flexmatch"]), None)
    assert "stack_state" in stackable([c, c])
    with pytest.raises(UserError, match="cannot be trained stacked"):
        StackedRuns([a, b])


def test_compare_stack_gives_the_sequential_table(tmp_path):
    cfg = resolve("embedded", sets=SMALL)
    seq = compare(cfg, ["fixmatch", "finessl"], [1, 2], tmp_path / "seq", progress=False)
    st = compare(cfg, ["fixmatch", "finessl"], [1, 2], tmp_path / "st", progress=False, stack=True)
    pd.testing.assert_frame_equal(seq, st)
    again = compare(cfg, ["fixmatch", "finessl"], [1, 2], tmp_path / "st", progress=False, stack=True)  # reused
    pd.testing.assert_frame_equal(st, again)


def test_paired_heads_equal_separate_heads_with_one_product_per_input():
    """_UnitPair computes the main and aux cosine heads of a view with one product x @ [W_main; W_aux].T (under
    vmap, x and x.detach() share it): logits and gradients equal those of separate heads."""
    from torch.func import vmap

    from finessl_lab.stacked import _Unit, _UnitPair

    g = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    x, wm, wa = unit(3, 7, 16), unit(3, 5, 16), unit(3, 5, 16)
    sm, sa = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([5.0, 6.0, 7.0])
    products = []

    def run(paired):
        w1, w2 = wm.clone().requires_grad_(), wa.clone().requires_grad_()

        def one(w1, w2, sm, sa, x):
            if paired:
                p = _UnitPair((w1, sm), (w2, sa))
                main, aux = (lambda f: p.logits(f, 0)), (lambda f: p.logits(f, 1))
            else:
                main, aux = _Unit(w1, sm), _Unit(w2, sa)
            out = main(x).logsumexp(-1).sum() + 2 * aux(x.detach()).logsumexp(-1).sum()
            if paired:
                products.append(len(p.cache))
            return out

        loss = vmap(one)(w1, w2, sm, sa, x)
        return (loss, *torch.autograd.grad(loss.sum(), [w1, w2]))

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert products == [1]


def test_the_rows_product_has_autograds_values_and_gradient():
    """_Product (x @ w.T with the backward dY.T @ x, its own vmap rule) gives the logits and weight gradient
    that autograd's x @ w.T gives, alone and under vmap."""
    from torch.func import vmap

    from finessl_lab.stacked import _Product

    g = torch.Generator().manual_seed(1)
    x, w0 = torch.randn(4, 6, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    dy = torch.randn(4, 6, 5, generator=g)
    for batched in (False, True):
        grads = []
        for product in (lambda a, b: a @ b.t(), _Product.apply):
            w = w0.clone().requires_grad_()
            y = vmap(product)(x, w) if batched else product(x[0], w[0])
            (y * (dy if batched else dy[0])).sum().backward()
            grads.append((y.detach(), w.grad))
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_stacked_sgd_gives_each_run_the_bits_of_its_own_optimizer(monkeypatch):
    """Runs sharing their SGD scalars are updated by one SGD step on the stacked tensors: the same weights and
    momentum buffers, bit for bit, as each run's own optimizer.step(); runs whose lr differs use their own."""
    cfgs = configs("finessl")[:2]
    exps = build_experiments(cfgs, progress=False)
    results = []
    for stacked_sgd in (True, False):
        if not stacked_sgd:
            monkeypatch.setattr(StackedRuns, "_sgd_stacked", lambda self: False)
        runs = StackedRuns([Trainer(c, None, experiment=e) for c, e in zip(cfgs, exps)])
        runs.fit()
        if stacked_sgd:
            assert runs._sgd and all(buf is not None for *_, buf in runs._sgd)  # the stacked path was taken
        results.append(([{n: t.detach().clone() for n, t in ts.items()} for ts in runs.heads.values()],
                        [t.optimizer.state_dict()["state"] for t in runs.trainers]))
    for a, b in zip(results[0][0], results[1][0]):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    for a, b in zip(results[0][1], results[1][1]):
        assert all(torch.equal(a[i]["momentum_buffer"], b[i]["momentum_buffer"]) for i in b)
    monkeypatch.undo()
    calls, own = [], StackedRuns._sgd_stacked
    monkeypatch.setattr(StackedRuns, "_sgd_stacked", lambda self: calls.append(own(self)) or calls[-1])
    train_stacked(configs("finessl"))  # run 3 has optim.lr=0.01: every run steps its own optimizer
    assert len(calls) == configs("finessl")[0].total_steps and not any(calls)


def test_the_bank_is_kept_for_the_next_stacked_runs_on_the_same_features():
    """The next StackedRuns on the same cached features reuses the bank (compare --stack stacks each algorithm in
    turn); features modified in place (their version counter) get a new bank, equal to a freshly filled one."""
    cfgs = configs("finessl")[:2]
    exps = build_experiments(cfgs, progress=False)
    first = StackedRuns([Trainer(c, None, experiment=e) for c, e in zip(cfgs, exps)])
    again = StackedRuns([Trainer(c, None, experiment=e) for c, e in zip(cfgs, exps)])
    assert again.bank is first.bank
    fresh = first._fill_bank(exps[0].features["weak"], exps[0].features["strong"], first.bank.shape[0], True,
                             first.bank.device)
    assert torch.equal(fresh, first.bank)
    weak = exps[0].features["weak"]
    saved = weak[0, 0].clone()
    weak[0, 0, :8] += 1  # an in-place change (the in-process feature cache's own tensors: restored below)
    try:
        changed = StackedRuns([Trainer(c, None, experiment=e) for c, e in zip(cfgs, exps)])
        assert changed.bank is not first.bank and not torch.equal(changed.bank, first.bank)
    finally:
        weak[0, 0] = saved


def test_only_configs_differing_in_seed_or_scalars_share_a_build():
    from finessl_lab.stacked import _shares_build

    base = build_experiments(configs("finessl")[:1], progress=False)[0]
    same = resolve("embedded", sets=SMALL + ["algorithm.name=finessl", "run.seed=7", "optim.lr=0.1"])
    other = resolve("embedded", sets=SMALL + ["algorithm.name=finessl", "data.labels_per_class=2"])
    assert _shares_build(base, same.validate().resolved())
    assert not _shares_build(base, other.validate().resolved())
