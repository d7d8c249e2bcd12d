"""Issue 13, target 2: the leaner FineSSL step (one weak-view max per step, margin and smoothing tables, pairwise
duplicate detection in the pace update, step logs stacked once per window) gives the same bits as the forms it
replaced: against a re-statement of those forms run side by side (exact on any machine), and against golden
values recorded from the code before the change."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from finessl_lab.algorithms.bms import (LearningPace, apply_margin_table, apply_margins, balanced_margins,
                                        margin_shape, margin_table)
from finessl_lab.algorithms.dls import masked_mean, smoothed_targets, soft_cross_entropy
from finessl_lab.algorithms.finessl import FineSSL
from finessl_lab.algorithms.fixmatch import FixMatch
from finessl_lab.build import build_experiment
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer

SMALL = ["data.subsample_per_class=20", "run.epochs=1", "run.steps_per_epoch=12", "run.progress=false",
         "algorithm.name=finessl", "algorithm.threshold=0.5", "algorithm.finessl.zeta=0.3", "optim.lr=0.1"]


# -- the forms before the change (finessl_lab at c21035b), re-stated ---------------------------------------------
def old_apply_margins(logits, targets, margins):
    m = margins.to(logits.dtype)[targets].unsqueeze(1).expand_as(logits)
    not_target = targets.unsqueeze(1) != torch.arange(logits.shape[1], device=logits.device)
    return logits + m * not_target


def old_pace_update(pace: LearningPace, index, probs):
    conf, pred = probs.max(dim=1)
    confident = conf >= pace.zeta
    new = torch.where(confident, pred, -1)
    writes = confident if pace.write == "confident" else torch.ones_like(confident)
    b = index.numel()
    rank = torch.where(writes, torch.arange(b), -1)
    order = torch.sort(index * (b + 1) + rank + 1).indices
    idx, rank, new = index[order], rank[order], new[order]
    last = torch.ones_like(idx, dtype=torch.bool)
    last[:-1] = idx[1:] != idx[:-1]
    live = last & (rank >= 0)
    target = torch.where(live, idx, pace.slots.numel())
    new = torch.where(live, new, -1)
    old = pace._slots[target]
    pace.counts.index_add_(0, old.clamp_min(0), -(old >= 0).long())
    pace.counts.index_add_(0, new.clamp_min(0), (new >= 0).long())
    pace._slots[target] = new


class OldFineSSL(FineSSL):
    """FineSSL's hooks exactly as they were before the change (per-hook max, margins added row by row, targets
    built per call, floor multiply, float mask in the masked mean, sort-based pace update)."""

    def observe(self, index, probs_w):
        if self.opts.margin_timing == "after":
            old_pace_update(self.pace, index, probs_w)
        beta = self.pace.beta()
        if not self.opts.bms:
            self.margins = torch.zeros_like(beta)
            return
        if self.opts.dynamic_alpha:
            m = (beta.max() - beta.min()) * self.opts.alpha_base * margin_shape(beta, self.opts.margin_form)
        else:
            m = self.opts.alpha_base * margin_shape(beta, self.opts.margin_form)
        self.margins = torch.where(self.pace.counts.max() > 0, m, 0.0)

    def after_losses(self, index, probs_w):
        if self.opts.margin_timing == "before":
            old_pace_update(self.pace, index, probs_w)

    def pseudo_label(self, probs_w):
        return probs_w.argmax(dim=1)

    def mask(self, probs_w):
        return (probs_w.max(dim=1).values >= self.cfg.threshold).float()

    def weight(self, probs_w, probs_aux, mask):
        if self.opts.smoothing_on_main:
            psi = probs_w.max(dim=1).values
        elif self.uses_aux:
            psi = probs_aux.max(dim=1).values
        else:
            return mask
        return psi * (psi >= self.opts.weight_floor)

    def supervised_loss(self, heads, fx, y, logs):
        logits = heads.main(fx).float()
        if self.opts.bms_supervised:
            logits = old_apply_margins(logits, y, self.margins)
        loss = F.cross_entropy(logits, y)
        logs["loss_x"] = loss.detach()
        if self.uses_aux:
            aux = F.cross_entropy(heads.aux(self._aux_in(fx)).float(), y)
            logs["loss_x_aux"] = aux.detach()
            loss = loss + aux
        return loss

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        pl2, mask2, weight2 = self._repeat(pl), self._repeat(mask), self._repeat(weight)
        logits = old_apply_margins(heads.main(self._views(u, 0)).float(), pl2, self.margins)
        smooth = smoothed_targets(pl2, self.num_classes, self.opts.smoothing, self.opts.smoothing_form)
        if self.opts.smoothing_on_main:
            per_sample = soft_cross_entropy(logits, smooth)
        else:
            per_sample = F.cross_entropy(logits, pl2, reduction="none")
        loss = self.opts.gamma * (per_sample * weight2).mean()
        logs["loss_u"] = loss.detach()
        logs["alpha_t"] = self.margins.max()
        if self.uses_aux:
            per = soft_cross_entropy(heads.aux(self._aux_in(self._views(u, 1))), smooth)
            if self.opts.aux_mean == "batch":
                aux = (per * mask2).mean()
            else:
                keep = mask2 > 0
                aux = torch.where(keep, per, 0.0).sum() / keep.sum().clamp_min(1)
            logs["loss_u_aux"] = aux.detach()
            loss = loss + aux
        return loss


# -- helpers ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experiment():
    return build_experiment(resolve("embedded", sets=SMALL), progress=False)


def run_steps(cfg, exp, steps=8, old=False):
    """``steps`` trainer steps (every third batch with repeated unlabeled samples), with :class:`OldFineSSL` if
    ``old`` is True (or the class ``old``); returns the trained parameters, the algorithm state, every step's logs
    and the trainer."""
    t = Trainer(cfg, None, experiment=exp, progress=False)
    if old:
        a = t.algorithm
        t.algorithm = (OldFineSSL if old is True else old)(cfg.algorithm, a.num_classes, a.num_unlabeled, a.device)
    t.algorithm.on_epoch_start(0)
    logs = []
    for i, batch in enumerate(itertools.islice(t.exp.batches(0, steps), steps)):
        if i % 3 == 2:  # a sample twice in a batch
            batch.u_index[1::4] = batch.u_index[0::4].clone()
        record = t._train_step(batch)
        t._call_hooks("on_step", record)
        t.step += 1
        logs.append({k: v.clone() for k, v in record.logs.items()})
    params = {n: p.detach().clone() for n, p in t.exp.model.named_parameters() if p.requires_grad}
    return params, t.algorithm.state_dict(), logs, t


def assert_same_bits(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_bits(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_bits(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), \
            f"{where}: differs by {(a.double() - b.double()).abs().max().item()}"
    else:
        assert a == b, where


VARIANTS = {
    "official": [],
    "write-all, after": ["algorithm.finessl.pace_write=all", "algorithm.finessl.margin_timing=after"],
    "paper forms, fixed alpha": ["algorithm.finessl.margin_form=paper", "algorithm.finessl.smoothing_form=paper",
                                 "algorithm.finessl.dynamic_alpha=false"],
    "floor, batch mean, split": ["algorithm.finessl.weight_floor=0.3", "algorithm.finessl.aux_mean=batch",
                                 "algorithm.finessl.strong_views=split"],
    "smoothing on main": ["algorithm.finessl.smoothing_on_main=true", "algorithm.finessl.bms_supervised=false"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_lean_step_gives_the_bits_of_the_forms_it_replaced(experiment, variant):
    cfg = resolve("embedded", sets=SMALL + VARIANTS[variant])
    new, old = run_steps(cfg, experiment)[:3], run_steps(cfg, experiment, old=True)[:3]
    assert_same_bits(new, old)
    assert int(new[1]["pace"]["counts"].sum()) > 0  # the pace (and so the margins) took part


# golden values: this file's run_steps(resolve("embedded", sets=SMALL), experiment, steps=8), verbatim in a script
# run with PYTHONPATH=<`git archive c21035b finessl_lab`> (the code before the change) on the 2-core dev machine,
# 2026-11-24; the code after the change printed the same digits there
GOLDEN_COUNTS = [19, 16, 11, 14, 22, 33, 21, 19, 32, 13]
GOLDEN_SLOTS_SUM = 965
GOLDEN_LOSS_X = [0.6155836582183838, 1.349905252456665, 0.4555838704109192, 0.2725437879562378, 0.07397693395614624,
                 0.10120163857936859, 0.0006153490976430476, 0.3661426603794098]
GOLDEN_WEIGHT_SUM = 90.63688607175344


def test_golden_values_recorded_before_the_change(experiment):
    params, state, logs, _ = run_steps(resolve("embedded", sets=SMALL), experiment)
    assert state["pace"]["counts"].tolist() == GOLDEN_COUNTS
    assert int(state["pace"]["slots"].sum()) == GOLDEN_SLOTS_SUM
    # floats: the same bits on the machine that recorded them; a tolerance for other CPUs' matmul kernels
    assert [float(r["loss_x"]) for r in logs] == pytest.approx(GOLDEN_LOSS_X, rel=1e-5)
    assert float(params["main.weight"].double().sum()) == pytest.approx(GOLDEN_WEIGHT_SUM, rel=1e-5)


# -- the pieces ---------------------------------------------------------------------------------------------------
def test_margin_table_adds_the_bits_of_apply_margins():
    g = torch.Generator().manual_seed(0)
    for c in (2, 3, 10):
        logits = torch.randn(50, c, generator=g) * 5
        logits[0, 0] = -0.0
        targets = torch.randint(0, c, (50,), generator=g)
        beta = torch.rand(c, generator=g)
        for margins in (balanced_margins(beta, 8.0), torch.zeros(c), balanced_margins(beta, 8.0, "paper")):
            assert_same_bits(apply_margin_table(logits, targets, margin_table(margins)),
                             apply_margins(logits, targets, margins))
            assert_same_bits(apply_margins(logits, targets, margins), old_apply_margins(logits, targets, margins))


@pytest.mark.parametrize("write", ["confident", "all"])
@pytest.mark.parametrize("pairwise_max", [LearningPace.PAIRWISE_MAX, 0])  # 0: every batch takes the sorting path
def test_pace_update_equals_the_sort_based_form_with_repeated_samples(write, pairwise_max, monkeypatch):
    monkeypatch.setattr(LearningPace, "PAIRWISE_MAX", pairwise_max)
    rnd = random.Random(1)
    g = torch.Generator().manual_seed(1)
    new, old = LearningPace(11, 4, 0.5, write=write), LearningPace(11, 4, 0.5, write=write)
    for step in range(60):
        b = rnd.choice([1, 2, 5, 16, 40])
        index = torch.tensor([rnd.randrange(11) for _ in range(b)])
        probs = torch.softmax(2 * torch.randn(b, 4, generator=g), 1)
        if step % 2:
            new.update(index, probs, probs.max(dim=1))
        else:
            new.update(index, probs)
        old_pace_update(old, index, probs)
        assert_same_bits(new._slots, old._slots, f"step {step}")
        assert_same_bits(new.counts, old.counts, f"step {step}")


def test_masked_mean_takes_a_boolean_mask_as_its_float_form():
    v = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    keep = torch.tensor([True, False, True, False])
    assert_same_bits(masked_mean(v, keep), masked_mean(v, keep.float()))
    assert float(masked_mean(v, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_step_logs_sum_to_the_values_of_each_step(experiment):
    cfg = resolve("embedded", sets=SMALL)
    _, _, logs, t = run_steps(cfg, experiment, steps=5)
    sums, n, bad = t._logs.read()
    assert n == 5 and bad is None
    for k in ("loss_x", "loss_u", "loss_u_aux", "alpha_t", "mask_ratio"):
        assert sums[k] == sum(float(r[k]) for r in logs)  # the same fp32 values summed in the same order


# -- the pseudo-label monitor: one index_add_ into a [C, 3] table gives the counts of the per-step form -----------
class OldMonitor:
    """PseudoLabelMonitor.on_step as it was before the [C, 3] table (three sums stacked, a class-count index_add_)."""

    def __init__(self, c):
        self.counts, self.sums, self.seen = torch.zeros(c, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0

    def on_step(self, r):
        y, m = r.y_true, r.mask > 0
        ok = r.pseudo_label == y
        if r.is_ood is not None:
            ok &= ~r.is_ood
        self.seen += len(r.pseudo_label)
        self.sums += torch.stack([ok.sum(), m.sum(), (ok & m).sum()])
        self.counts.index_add_(0, r.pseudo_label, m.long())


@pytest.mark.parametrize("count_every", [1, 5, 64])  # counted every step, every 5 steps, only when read
def test_pseudo_label_monitor_counts_as_the_per_step_form(count_every):
    from finessl_lab.hooks import PseudoLabelMonitor, StepRecord

    g = torch.Generator().manual_seed(3)
    c = 5
    new, old = PseudoLabelMonitor(c, count_every=count_every), OldMonitor(c)
    for step in range(12):
        u = [7, 7, 3, 9][step % 4]  # the batch size changes
        pl = torch.randint(0, c, (u,), generator=g)
        y = torch.where(torch.rand(u, generator=g) < 0.5, pl, torch.randint(0, c, (u,), generator=g))
        mask = (torch.rand(u, generator=g) < 0.6).float()
        if step % 3 == 1:
            mask = mask * 0.5  # a non-0/1 weight: counted where > 0
        elif step % 5 == 0:
            mask = mask > 0  # a boolean mask
        ood = torch.rand(u, generator=g) < 0.2 if step % 2 else None
        r = StepRecord(step, 0, {}, None, None, None, pl, mask, mask, y, ood)
        new.on_step(r)
        old.on_step(r)
        if step == 5:  # a checkpoint mid-epoch reads the table; a resumed monitor continues from the state
            state = new.state_dict()
            new = PseudoLabelMonitor(c, count_every=count_every)
            new.load_state_dict(state)
    state = new.state_dict()
    assert state["counts"].tolist() == old.counts.tolist()
    assert [state["correct"], state["masked"], state["masked_correct"]] == old.sums.tolist()
    assert state["seen"] == old.seen == 3 * (7 + 7 + 3 + 9)
    assert old.counts.sum() > 0 and 0 < old.sums[2] < old.sums[1]  # the counts took part
    row = new.on_epoch_end(0, {})
    c_, m_, mc = old.sums.tolist()
    assert row["pl_acc"] == 100.0 * c_ / old.seen and row["pl_acc_masked"] == 100.0 * mc / m_
    assert row["pl_mask_ratio"] == m_ / old.seen
    assert new.state_dict()["seen"] == 0 and new.state_dict()["counts"].sum() == 0  # a new epoch starts at zero


# -- the cosine heads inside normalised_once: lazy normalisation, Module.__call__ skipped only without hooks ------
def _two_heads():
    from finessl_lab.models.heads import CosineHead

    torch.manual_seed(0)
    return CosineHead(6, 4), CosineHead(6, 4, scale_param="direct")


def test_a_head_is_normalised_on_its_first_call_in_the_blocks_grad_mode(monkeypatch):
    from finessl_lab.models.heads import CosineHead, normalised_once

    main, aux = _two_heads()
    calls = []
    real = CosineHead._normalise
    monkeypatch.setattr(CosineHead, "_normalise", lambda self, *a: calls.append(self) or real(self, *a))
    x = torch.randn(5, 6)
    with normalised_once(main, aux):
        assert calls == []  # nothing normalised on entering
        with torch.no_grad():
            main(x)  # the first call comes without grad ...
        y = main(x) + main(x)
        assert calls == [main]  # ... once for the block; aux, never called, is never normalised
    assert y.requires_grad  # ... and the rows it cached carry the graph of the block's grad mode
    y.sum().backward()
    assert main.weight.grad is not None and aux.weight.grad is None


def test_lazy_normalisation_gives_the_bits_of_normalising_on_entering_the_block():
    """The block used to normalise every head on entering it (then under the entry's grad mode, as the lazy form
    does on the first call); the values and gradients are the same bits either way."""
    from finessl_lab.models.heads import normalised_once

    main, aux = _two_heads()
    a, b = torch.randn(5, 6), torch.randn(7, 6)

    def loss():
        with torch.no_grad():
            w = main(a).softmax(1)
        return (main(a) * w).sum() + aux(b.detach()).logsumexp(1).sum() + main(b).sum()

    out = []
    for eager in (True, False):
        for h in (main, aux):
            h.zero_grad()
        with normalised_once(main, aux, main):
            if eager:  # the form before: both heads normalised on entering the block
                main.normalised(), aux.normalised()
            v = loss()
        v.backward()
        out.append((v.detach(), [p.grad.clone() for p in (*main.parameters(), *aux.parameters())]))
    assert_same_bits(out[0], out[1])


@pytest.mark.parametrize("where", ["forward", "forward_pre", "global_forward", "backward"])
def test_hooks_on_a_head_still_run_inside_the_block(where):
    from finessl_lab.models.heads import normalised_once

    main, _ = _two_heads()
    seen = []
    if where == "forward":
        handle = main.register_forward_hook(lambda m, i, o: seen.append("f") or o * 2)
    elif where == "forward_pre":
        handle = main.register_forward_pre_hook(lambda m, i: seen.append("p"))
    elif where == "global_forward":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append("g"))
    else:
        handle = main.register_full_backward_hook(lambda m, gi, go: seen.append("b"))
    x = torch.randn(3, 6, requires_grad=True)
    try:
        plain = main(x)
        with normalised_once(main):
            assert not main._direct
            cached = main(x)
        cached.sum().backward()
    finally:
        handle.remove()
    # the hook ran on both calls (a backward hook: on the one backward)
    assert len(seen) == (1 if where == "backward" else 2) and torch.equal(plain, cached)
    with normalised_once(main):
        assert main._direct  # hooks removed: the direct call again
    assert not main._direct


def test_a_fixmatch_step_never_normalises_the_aux_head(experiment, monkeypatch):
    from finessl_lab.models.heads import CosineHead

    cfg = resolve("embedded", sets=SMALL + ["algorithm.name=fixmatch"])
    t = Trainer(cfg, None, experiment=experiment, progress=False)
    calls = []
    real = CosineHead._normalise
    monkeypatch.setattr(CosineHead, "_normalise", lambda self, *a: calls.append(self) or real(self, *a))
    batch = next(iter(t.exp.batches(0, 1)))
    t._train_step(batch)
    assert calls == [t.exp.model.main]


# -- the FixMatch template: one weak-view max for label and mask, no multiply by unlabeled_weight 1 ----------------
class OldFixMatch(FixMatch):
    """The base template's hooks as they were: argmax and max separately, the unlabeled loss always multiplied by
    unlabeled_weight, both log means computed."""

    def pseudo_label(self, probs_w):
        return probs_w.argmax(dim=1)

    def mask(self, probs_w):
        return (probs_w.max(dim=1).values >= self.cfg.threshold).float()

    def unlabeled_loss(self, heads, u, pl, mask, weight, logs):
        per_sample = F.cross_entropy(heads.main(u.strong[0]).float(), pl, reduction="none")
        loss = self.cfg.unlabeled_weight * (per_sample * weight).mean()
        logs["loss_u"] = loss.detach()
        return loss

    def _step(self, heads, fx, y, u, u_index):
        out = super()._step(heads, fx, y, u, u_index)
        out.logs["weight_mean"] = out.weight.mean()
        return out


@pytest.mark.parametrize("sets", [[], ["algorithm.unlabeled_weight=2.0", "algorithm.threshold=0.3"]])
def test_the_fixmatch_step_gives_the_bits_of_the_forms_it_replaced(experiment, sets):
    cfg = resolve("embedded", sets=SMALL + ["algorithm.name=fixmatch"] + sets)
    new, old = run_steps(cfg, experiment)[::2], run_steps(cfg, experiment, old=OldFixMatch)[::2]
    assert_same_bits(new, old)
    assert 0 < sum(float(r["mask_ratio"]) for r in new[1]) < len(new[1])  # the mask took part


def test_weak_top_labels_are_argmax_with_ties_and_nan():
    p = torch.tensor([[0.25, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25], [0.1, float("nan"), 0.9, 0.0],
                      [0.0, 0.0, 0.3, 0.7]])
    alg = FixMatch(resolve("embedded", sets=SMALL).algorithm, 4, 10)
    assert torch.equal(alg.pseudo_label(p), p.argmax(dim=1))
    assert torch.equal(alg.mask(p), (p.max(dim=1).values >= alg.cfg.threshold).float())
    q = p.clone()
    alg.pseudo_label(p)
    p[3] = torch.tensor([0.9, 0.0, 0.1, 0.0])  # changed in place: not the cached max any more
    assert torch.equal(alg.pseudo_label(p), p.argmax(dim=1)) and not torch.equal(p, q)


def test_unit_rows_are_the_bits_of_F_normalize_forward_and_backward():
    from finessl_lab.models.heads import unit_rows

    g = torch.Generator().manual_seed(5)
    for shape in [(7, 1280), (10, 3), (1, 5)]:
        x = torch.randn(*shape, generator=g) * 3
        x[0] = 0.0  # a zero row: the clamp decides
        up = torch.randn(*shape, generator=g)
        out = []
        for f in (unit_rows, lambda t: F.normalize(t, dim=-1)):
            t = x.clone().requires_grad_(True)
            y = f(t)
            (y * up).sum().backward()
            out.append((y.detach(), t.grad))
        assert_same_bits(out[0], out[1])


def test_lazy_normalisation_under_autocast_computes_in_fp32_with_the_graph():
    from finessl_lab.models.heads import normalised_once

    main, _ = _two_heads()
    x = torch.randn(5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = main(x)
        with normalised_once(main):
            with torch.no_grad():
                first = main(x)
            again = main(x)
            assert main._once[0].dtype == torch.float32 and main._once[0].requires_grad
    assert plain.dtype == first.dtype == again.dtype == torch.float32
    assert torch.equal(plain, first) and torch.equal(plain, again)


def test_cached_feature_rows_keep_values_and_the_graph_of_each_input():
    """Inside the block a detached view reuses the rows of its input, detached; an input needing the graph after
    its detached view was seen gets rows with the graph. The values are those outside the block."""
    from finessl_lab.models.heads import normalised_once

    main, aux = _two_heads()
    a, c = torch.randn(5, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    plain = [main(a), aux(a.detach()), aux(c.detach()), main(c)]
    with normalised_once(main, aux):
        cached = [main(a), aux(a.detach()), aux(c.detach()), main(c)]
    assert [t.requires_grad for t in cached] == [True, True, True, True]  # (the heads' own weights need grad)
    assert_same_bits([t.detach() for t in cached], [t.detach() for t in plain])
    (cached[1].sum() + cached[2].sum()).backward()
    assert a.grad is None and c.grad is None  # the detached views passed no gradient to the inputs
    cached[3].sum().backward()
    assert c.grad is not None and a.grad is None


@pytest.mark.parametrize("precision, expected", [
    ("fp32", False),
    pytest.param("bf16", True, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 needs CUDA"))])
def test_the_step_runs_in_an_autocast_region_exactly_for_autocast_precisions(experiment, precision, expected):
    dev = "cuda" if precision == "bf16" else "cpu"
    if precision == "fp32":  # (the module's experiment: precision auto = fp32 on CPU)
        t = Trainer(resolve("embedded", sets=SMALL), None, experiment=experiment, progress=False)
    else:
        cfg = resolve("embedded", sets=SMALL + [f"run.precision={precision}", f"run.device={dev}"])
        t = Trainer(cfg, None, progress=False)
    seen, step = [], t.algorithm.step
    t.algorithm.step = lambda *a, **k: seen.append(torch.is_autocast_enabled(dev)) or step(*a, **k)
    record = t._train_step(next(iter(t.exp.batches(0, 1))))
    assert seen == [expected] and record.probs_main.dtype == torch.float32
