"""Issue 13, target 2: no host-device sync inside a head-level training step (counted on CPU with
finessl_lab.syncs, which catches the calls that would sync on an accelerator), and the sync-free forms of the
masked losses and of the pace bookkeeping equal the old boolean-indexed ones."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from finessl_lab.algorithms.bms import LearningPace
from finessl_lab.algorithms.dls import masked_mean
from finessl_lab.build import build_experiment
from finessl_lab.models.heads import CosineHead, normalised_once
from finessl_lab.presets import resolve
from finessl_lab.syncs import count_host_syncs
from finessl_lab.trainer import Trainer

SMALL = ["data.subsample_per_class=20", "run.epochs=1", "run.steps_per_epoch=4", "run.progress=false"]
SYNC_FREE = ("fixmatch", "finessl", "softmatch", "debiaspl", "pseudolabel", "flexmatch")


def test_the_counter_sees_every_kind_of_sync():
    x = torch.tensor([1.0, -2.0, 3.0])
    with count_host_syncs() as s:
        x.sum().item()
        if x.max() > 0:
            pass
        _ = x[x > 0], int(x.argmax()), float(x.min()), x.tolist(), x.cpu(), x.nonzero(), torch.bincount(x.long().abs())
        y = torch.where(x > 0, x, 0.0) * 2 + x.softmax(0)  # device-side: not a sync
    assert s.calls == {"item": 1, "__bool__": 1, "boolean-mask __getitem__": 1, "__int__": 1, "__float__": 1,
                       "tolist": 1, "cpu": 1, "nonzero": 1, "bincount": 1}, s.report()
    assert y.shape == (3,)


@pytest.fixture(scope="module")
def experiment():
    return build_experiment(resolve("embedded", sets=SMALL), progress=False)


def steps_syncs(cfg, exp=None, steps=3):
    t = Trainer(cfg, None, experiment=exp, progress=False)
    t.algorithm.on_epoch_start(0)
    counts = []
    for batch in itertools.islice(t.exp.batches(0, steps), steps):
        with count_host_syncs() as s:
            record = t._train_step(batch)
            t._call_hooks("on_step", record)  # the built-in pseudo-label monitor included
        t.step += 1
        counts.append(s)
    return counts


@pytest.mark.parametrize("algorithm", SYNC_FREE)
def test_a_head_level_step_never_syncs_the_host(experiment, algorithm):
    cfg = resolve("embedded", sets=SMALL + [f"algorithm.name={algorithm}"])
    for s in steps_syncs(cfg, experiment):
        assert s.count == 0, f"{algorithm}: {s.report()}"


def test_supervised_step_never_syncs_the_host(experiment):
    cfg = resolve("embedded", sets=SMALL + ["algorithm.name=supervised"])
    exp = build_experiment(cfg, uses_unlabeled=False, progress=False)  # the features come from the cache
    for s in steps_syncs(cfg, exp):
        assert s.count == 0, s.report()


def test_logs_are_read_once_per_epoch_and_match_the_step_values(experiment):
    cfg = resolve("embedded", sets=SMALL + ["algorithm.name=finessl"])
    t = Trainer(cfg, None, experiment=experiment, progress=False)
    seen = []
    t.algorithm.step = (lambda step: lambda *a, **k: seen.append(step(*a, **k)) or seen[-1])(t.algorithm.step)
    t.fit()
    row = t.rows[-1]
    for k in ("loss_x", "loss_u", "loss_u_aux", "mask_ratio"):
        assert row[k] == pytest.approx(sum(float(o.logs[k]) for o in seen) / len(seen), rel=1e-6)
    assert row["loss"] == pytest.approx(sum(float(o.loss.detach()) for o in seen) / len(seen), rel=1e-6)


def test_masked_mean_equals_the_boolean_indexed_mean():
    v = torch.tensor([1.0, 2.0, 4.0, 8.0], requires_grad=True)
    m = masked_mean(v, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert float(m.detach()) == 2.5  # (1 + 4) / 2
    m.backward()
    assert v.grad.tolist() == [0.5, 0.0, 0.5, 0.0]
    none = masked_mean(torch.tensor([float("inf"), 3.0]), torch.zeros(2))
    assert float(none) == 0.0  # the official 0 when nothing is masked, and an unmasked Inf does not leak in


def reference_pace(slots, index, probs, zeta, write):
    """The old boolean-indexed update: writing entries only, the last occurrence of a sample wins."""
    slots = slots.clone()
    conf, pred = probs.max(1)
    for i, c, p in zip(index.tolist(), conf.tolist(), pred.tolist()):
        if c >= zeta:
            slots[i] = p
        elif write == "all":
            slots[i] = -1
    return slots


@pytest.mark.parametrize("write", ["confident", "all"])
def test_sync_free_pace_update_equals_the_reference_with_duplicates(write):
    rnd = random.Random(0)
    g = torch.Generator().manual_seed(0)
    pace = LearningPace(7, 3, 0.6, write=write)
    expected = pace.slots.clone()
    for _ in range(40):
        b = rnd.randint(1, 9)
        index = torch.tensor([rnd.randrange(7) for _ in range(b)])  # duplicates on purpose
        probs = torch.softmax(3 * torch.randn(b, 3, generator=g), 1)
        expected = reference_pace(expected, index, probs, 0.6, write)
        pace.update(index, probs)
        assert torch.equal(pace.slots, expected)
        assert torch.equal(pace.counts, torch.bincount(expected[expected >= 0], minlength=3))
    with count_host_syncs() as s:
        pace.update(index, probs)
        pace.beta()
    assert s.count == 0, s.report()


@pytest.mark.parametrize("scale_param", ["log", "direct"])
def test_normalising_once_per_step_changes_no_value_and_no_gradient(scale_param):
    torch.manual_seed(0)
    head = CosineHead(5, 3, scale_param=scale_param)
    a, b = torch.randn(4, 5), torch.randn(6, 5)

    def loss():
        with torch.no_grad():
            w = head(a).softmax(1)
        return (head(a) * w).sum() + head(b).logsumexp(1).sum()

    plain = loss()
    plain.backward()
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    with normalised_once(head):
        cached = loss()
        assert head._once is not None
    cached.backward()
    assert head._once is None and torch.equal(plain, cached)
    for g0, p in zip(grads, head.parameters()):
        torch.testing.assert_close(p.grad, g0, rtol=1e-6, atol=1e-7)
