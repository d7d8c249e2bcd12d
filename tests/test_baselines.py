"""The paper's baselines on tiny tensors: each rule against values worked out by hand from the papers'
definitions, the DebiasPL tau=0 == FixMatch identity, and FlexMatch counting with a non-default threshold."""
import math

import pytest
import torch
import torch.nn.functional as F

from finessl_lab.algorithms import REGISTRY, Heads, build_algorithm
from finessl_lab.algorithms.debiaspl import debias
from finessl_lab.algorithms.flexmatch import flex_thresholds
from finessl_lab.algorithms.freematch import fairness_loss
from finessl_lab.config import Config
from finessl_lab.errors import UserError
from conftest import head_batch

C = 3


def heads(seed=0):
    torch.manual_seed(seed)
    main = torch.nn.Linear(4, C, bias=False)
    with torch.no_grad():
        main.weight.mul_(6)
    return Heads(main, torch.nn.Linear(4, C, bias=False))



def cfg(name, threshold=0.7, **opts):
    c = Config()
    c.set("algorithm.name", name)
    c.set("algorithm.threshold", threshold)
    for k, v in opts.items():
        c.set(f"algorithm.{name}.{k}", v)
    return c.validate().algorithm


P = torch.tensor([[0.80, 0.15, 0.05],
                  [0.10, 0.60, 0.30],
                  [0.20, 0.20, 0.60],
                  [0.05, 0.90, 0.05]])


def test_every_baseline_is_registered_with_its_options():
    assert {"supervised", "pseudolabel", "fixmatch", "flexmatch", "freematch", "softmatch", "debiaspl",
            "finessl"} <= set(REGISTRY)
    with pytest.raises(UserError, match="algorithm.flexmatch.mapping"):
        Config().set("algorithm.flexmatch.mapping", "cubic").validate()
    with pytest.raises(UserError, match="algorithm.debiaspl.tau"):
        Config().set("algorithm.debiaspl.tau", -1).validate()


# -- Pseudo-Label ------------------------------------------------------------------------------------------
def test_pseudolabel_trains_on_the_weak_view_and_ramps_up():
    h, (fx, y, u, idx) = heads(), head_batch()
    alg = build_algorithm(cfg("pseudolabel", 0.7, rampup_steps=4), C, 6)
    p = torch.softmax(h.main(u.weak), 1)
    mask = (p.max(1).values >= 0.7).float()
    assert 0 < mask.sum() < len(mask)
    lu = (F.cross_entropy(h.main(u.weak), p.argmax(1), reduction="none") * mask).mean()
    lx = F.cross_entropy(h.main(fx), y)
    for t in range(6):  # weight t/4 for t < 4, then 1
        out = alg.step(h, fx, y, u, idx)
        assert torch.isclose(out.loss, lx + min(1.0, t / 4) * lu)
    strong = build_algorithm(cfg("pseudolabel", 0.7, view="strong"), C, 6).step(h, fx, y, u, idx)
    ls = (F.cross_entropy(h.main(u.strong[0]), p.argmax(1), reduction="none") * mask).mean()
    assert torch.isclose(strong.loss, lx + ls)


# -- FlexMatch ---------------------------------------------------------------------------------------------
def test_flexmatch_thresholds_by_hand():
    counts = torch.tensor([2, 1, 0])
    # warm-up: normaliser max(2, 5 unused) = 5 -> beta (.4, .2, 0) -> x/(2-x) = (.25, 1/9, 0)
    assert torch.allclose(flex_thresholds(counts, 5, 0.8, True, "convex"), torch.tensor([0.2, 0.8 / 9, 0.0]))
    # no warm-up: normaliser 2 -> beta (1, .5, 0) -> (1, 1/3, 0)
    assert torch.allclose(flex_thresholds(counts, 5, 0.8, False, "convex"), torch.tensor([0.8, 0.8 / 3, 0.0]))
    assert torch.allclose(flex_thresholds(counts, 5, 0.8, False, "linear"), torch.tensor([0.8, 0.4, 0.0]))
    assert torch.equal(flex_thresholds(torch.zeros(3, dtype=torch.long), 0, 0.8, False, "convex"), torch.zeros(3))


def test_flexmatch_counts_with_the_configured_threshold_and_keeps_old_slots():
    alg = build_algorithm(cfg("flexmatch", 0.55), C, 8)
    alg.observe(torch.tensor([0, 1, 2, 3]), P)  # confidences .8 .6 .6 .9 all >= .55 (none >= .95)
    assert alg.slots.tolist() == [0, 1, 2, 1, -1, -1, -1, -1]
    assert alg.counts().tolist() == [1, 2, 1]
    low = torch.tensor([[0.4, 0.3, 0.3]])
    alg.observe(torch.tensor([0]), low)  # an unconfident visit leaves the old slot
    assert alg.slots[0] == 0
    # warm-up normaliser max(2, 4 unused) = 4: beta (.25, .5, .25), T = .55 * beta / (2 - beta)
    t = 0.55 * torch.tensor([0.25 / 1.75, 0.5 / 1.5, 0.25 / 1.75])
    assert torch.allclose(alg.thresholds(), t)
    assert alg.mask(low).tolist() == [1.0]  # 0.4 >= 0.55/7
    assert alg.mask(torch.tensor([[0.1, 0.15, 0.75]])).tolist() == [1.0]
    nw = build_algorithm(cfg("flexmatch", 0.55, threshold_warmup=False), C, 8)
    nw.observe(torch.tensor([0, 1, 2, 3]), P)  # normaliser 2: beta (.5, 1, .5), T = .55 * (1/3, 1, 1/3)
    assert torch.allclose(nw.thresholds(), 0.55 * torch.tensor([1 / 3, 1.0, 1 / 3]))
    assert nw.mask(torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]])).tolist() == [0.0, 1.0, 1.0]
    fm = build_algorithm(cfg("flexmatch", 0.95), C, 8)
    fm.observe(torch.tensor([0, 1, 2, 3]), P)
    assert fm.counts().tolist() == [0, 0, 0]


def test_flexmatch_step_masks_with_the_class_thresholds():
    h, (fx, y, u, idx) = heads(), head_batch()
    alg = build_algorithm(cfg("flexmatch", 0.7), C, 6)
    out = alg.step(h, fx, y, u, idx)
    p = torch.softmax(h.main(u.weak), 1)
    conf, pl = p.max(1)
    counts = torch.bincount(pl[conf >= 0.7], minlength=C)
    unused = int((conf < 0.7).sum())
    beta = counts.float() / max(int(counts.max()), unused)
    mask = (conf >= 0.7 * beta[pl] / (2 - beta[pl])).float()
    assert torch.equal(out.mask, mask)
    lu = (F.cross_entropy(h.main(u.strong[0]), pl, reduction="none") * mask).mean()
    assert torch.isclose(out.loss, F.cross_entropy(h.main(fx), y) + lu)


# -- FreeMatch ---------------------------------------------------------------------------------------------
def test_freematch_self_adaptive_threshold_by_hand():
    alg = build_algorithm(cfg("freematch", ema=0.5), C, 4)
    alg.observe(torch.arange(4), P)
    # tau = .5/3 + .5 * mean(.8, .6, .6, .9) = 1/6 + .3625
    assert math.isclose(float(alg.tau_t), 1 / 6 + 0.3625, rel_tol=1e-6)
    mean_p = torch.tensor([1.15, 1.85, 1.0]) / 4
    p_t = 0.5 / 3 + 0.5 * mean_p
    assert torch.allclose(alg.p_t, p_t)
    assert torch.allclose(alg.h_t, 0.5 / 3 + 0.5 * torch.tensor([0.25, 0.5, 0.25]))
    thr = (1 / 6 + 0.3625) * p_t / p_t.max()
    assert torch.allclose(alg.thresholds(), thr)
    assert alg.mask(P).tolist() == [float(c >= thr[k]) for c, k in zip([0.8, 0.6, 0.6, 0.9], [0, 1, 2, 1])]


def test_freematch_fairness_loss_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]))
    mask = torch.tensor([1.0, 1.0, 0.0])
    p_t, h_t = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.4, 0.2])
    target = torch.tensor([0.5 / 0.4, 0.3 / 0.4, 0.2 / 0.2])
    target = target / target.sum()
    # masked rows predict classes 0 and 1: hist_s = (.5, .5, 0); mean prob (.4, .4, .2) -> (.8, .8, 0) -> (.5, .5, 0)
    mean_s = torch.tensor([0.5, 0.5, 0.0])
    expected = (target * torch.log(mean_s + 1e-12)).sum()
    assert torch.isclose(fairness_loss(logits, mask, p_t, h_t), expected)
    assert fairness_loss(logits, torch.zeros(3), p_t, h_t) == 0


def test_freematch_step_adds_the_weighted_fairness_term():
    h, (fx, y, u, idx) = heads(), head_batch()
    alg = build_algorithm(cfg("freematch", fairness_weight=0.5), C, 6)
    out = alg.step(h, fx, y, u, idx)
    logits_s = h.main(u.strong[0])
    lu = (F.cross_entropy(logits_s, out.pseudo_label, reduction="none") * out.mask).mean()
    lf = fairness_loss(logits_s, out.mask, alg.p_t, alg.h_t)
    assert torch.isclose(out.loss, F.cross_entropy(h.main(fx), y) + lu + 0.5 * lf)


# -- SoftMatch ---------------------------------------------------------------------------------------------
def test_softmatch_alignment_and_gaussian_weight_by_hand():
    alg = build_algorithm(cfg("softmatch", ema=0.5), C, 4)
    alg.observe(torch.arange(4), P)
    pm = P.mean(0)  # first step: p_model = batch mean
    q = P * (1 / 3 + 1e-6) / (pm + 1e-6)
    q = q / q.sum(1, keepdim=True)
    assert torch.allclose(alg.p_model, pm)
    assert torch.equal(alg.pseudo_label(P), q.argmax(1))
    conf = q.max(1).values
    mu = 0.5 / 3 + 0.5 * conf.mean()
    var = 0.5 * 1.0 + 0.5 * conf.var()
    assert torch.isclose(alg.mu_t, mu) and torch.isclose(alg.var_t, var)
    w = torch.exp(-(torch.clamp(conf - mu, max=0) ** 2) / (2 * var / 4))
    assert torch.allclose(alg.weight(P, None, alg.mask(P)), w)
    assert (w[conf >= mu] == 1).all()
    alg.observe(torch.arange(4), P)  # second step: EMA of p_model
    assert torch.allclose(alg.p_model, pm)  # same batch mean -> unchanged


def test_softmatch_without_alignment_uses_raw_predictions():
    alg = build_algorithm(cfg("softmatch", uniform_alignment=False, lambda_max=0.5), C, 4)
    alg.observe(torch.arange(4), P)
    assert torch.equal(alg.pseudo_label(P), P.argmax(1))
    assert alg.weight(P, None, alg.mask(P)).max() <= 0.5


# -- DebiasPL ----------------------------------------------------------------------------------------------
def test_debias_is_logit_adjustment():
    prior = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.log(P)
    assert torch.allclose(debias(P, prior, 0.4), torch.softmax(logits - 0.4 * prior.log(), 1))


def test_debiaspl_prior_moves_over_the_batch_axis_and_is_used_by_hand():
    alg = build_algorithm(cfg("debiaspl", 0.5, tau=1.0, ema=0.5), C, 4)
    alg.observe(torch.arange(4), P)
    # the first step debiases with the uniform prior (no change), then p_hat = .5/3 + .5 mean_b P
    assert torch.allclose(alg._debiased, P)
    p_hat = 0.5 / 3 + 0.5 * P.mean(0)
    assert torch.allclose(alg.p_hat, p_hat)
    assert not torch.allclose(p_hat, torch.full((3,), 1 / 3))
    alg.observe(torch.arange(4), P)
    q = P / p_hat
    q = q / q.sum(1, keepdim=True)
    assert torch.allclose(alg._debiased, q)
    assert torch.equal(alg.pseudo_label(P), q.argmax(1))
    assert torch.equal(alg.mask(P), (q.max(1).values >= 0.5).float())


def test_debiaspl_marginal_loss_by_hand():
    h, (fx, y, u, idx) = heads(), head_batch()
    alg = build_algorithm(cfg("debiaspl", 0.5, tau=0.4, ema=0.9), C, 6)
    out = alg.step(h, fx, y, u, idx)
    p = torch.softmax(h.main(u.weak), 1)
    p_hat = 0.9 / 3 + 0.1 * p.mean(0)
    logits = h.main(u.strong[0]) + 0.4 * p_hat.log()
    lu = (F.cross_entropy(logits, p.argmax(1), reduction="none") * (p.max(1).values >= 0.5)).mean()
    assert torch.isclose(out.loss, F.cross_entropy(h.main(fx), y) + lu)


def test_debiaspl_with_tau_zero_is_fixmatch():
    h = heads()
    a = build_algorithm(cfg("debiaspl", 0.7, tau=0.0), C, 6)
    b = build_algorithm(cfg("fixmatch", 0.7), C, 6)
    for seed in range(4):
        fx, y, u, idx = head_batch(seed)
        oa, ob = a.step(h, fx, y, u, idx), b.step(h, fx, y, u, idx)
        assert torch.equal(oa.loss, ob.loss)
        assert torch.equal(oa.pseudo_label, ob.pseudo_label) and torch.equal(oa.mask, ob.mask)


# -- state -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pseudolabel", "flexmatch", "freematch", "softmatch", "debiaspl"])
def test_state_round_trips(name):
    h = heads()
    a = build_algorithm(cfg(name, 0.5), C, 6)
    for seed in range(3):
        a.step(h, *head_batch(seed))
    b = build_algorithm(cfg(name, 0.5), C, 6)
    b.load_state_dict(a.state_dict())
    fx, y, u, idx = head_batch(7)
    oa, ob = a.step(h, fx, y, u, idx), b.step(h, fx, y, u, idx)
    assert torch.equal(oa.loss, ob.loss) and torch.equal(oa.weight, ob.weight)


def test_flexmatch_incremental_counts_equal_counting_the_slots_with_duplicates():
    """FlexMatch keeps sigma incrementally (O(batch)); it must equal the old rule -- write the latest confident
    label of each visited sample, recount all slots -- on random batches that repeat samples."""
    g = torch.Generator().manual_seed(0)
    alg = build_algorithm(cfg("flexmatch", 0.6), C, 12)
    ref = torch.full((12,), -1, dtype=torch.long)
    for _ in range(30):
        index = torch.randint(0, 12, (6,), generator=g)
        probs = torch.softmax(3 * torch.randn(6, C, generator=g), dim=1)
        alg.observe(index, probs)
        conf, pred = probs.max(dim=1)
        for i, c, p in zip(index.tolist(), conf.tolist(), pred.tolist()):  # in order: the last confident visit wins
            if c >= 0.6:
                ref[i] = p
        assert torch.equal(alg.slots, ref)
        assert alg.counts().tolist() == [int((ref == k).sum()) for k in range(C)]
    t = flex_thresholds(alg.counts(), int((ref < 0).sum()), 0.6, True, "convex")
    assert torch.allclose(alg.thresholds(), t)
    state = alg.state_dict()
    fresh = build_algorithm(cfg("flexmatch", 0.6), C, 12)
    fresh.load_state_dict({"slots": state["slots"]})  # an older checkpoint without counts
    assert torch.equal(fresh.counts(), alg.counts())
