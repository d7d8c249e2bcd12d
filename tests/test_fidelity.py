"""Fidelity (issue 7): the `fidelity` switch, and one test per item of the README's fidelity table.

The contract test re-states the official trainer's step (Gank0078/FineSSL trainer.py) from its semantics and
checks FineSSL's default loss against it over successive steps, pace state carried across steps.
"""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import functional as TF

from finessl_lab.algorithms import Heads, UnlabeledViews, build_algorithm
from finessl_lab.algorithms.bms import LearningPace
from finessl_lab.build import transform_description
from finessl_lab.cli import build_parser, config_from_args
from finessl_lab.config import AlgorithmConfig, Config, diff, get_dotted
from finessl_lab.data import randaugment_mc as ramc
from finessl_lab.data.batches import FeatureBatches, SplitView
from finessl_lab.data.datasets import NORMALIZATION, resolve_normalization
from finessl_lab.data.randaugment_mc import RandAugmentMC, cutout_abs
from finessl_lab.data.sampling import replayed_step
from finessl_lab.data.splits import cached_split, make_split
from finessl_lab.data.transforms import build_transforms, seeded
from finessl_lab.device import resolve_precision
from finessl_lab.errors import UserError
from finessl_lab.fidelity import ITEMS, explicit_items
from finessl_lab.models.heads import CosineHead, random_unit_rows
from finessl_lab.presets import PRESETS, resolve
from finessl_lab.trainer import lr_factor, param_groups

C = 4


# -- the contract: FineSSL's default step == the official trainer's step ----------------------------------

def official_step(main, aux, fx, y, uw, us, us1, uidx, state, th=0.7, alpha_base=8.0, w_con=3.0, smoothing=0.5,
                  th_min=0.0):
    """A re-statement of one step of the official trainer.py, written from its semantics: Counter over the slots
    (skipped while one value fills every slot), margins from the slots as they were before the batch, 2U strong rows,
    psi-weighted CE averaged over all 2U rows, aux smoothed CE averaged over the masked rows only, and afterwards
    only confident predictions write their slot."""
    selected, classwise = state["selected"], state["classwise"]
    counter = Counter(selected.tolist())
    if max(counter.values()) < len(selected):
        wo = {k: v for k, v in counter.items() if k != -1}
        for i in range(C):
            classwise[i] = counter[i] / max(wo.values())
    betabase = torch.ones(C, C) - torch.eye(C)
    mar_diff = (classwise.max() - classwise.min()) * alpha_base
    alpha = ((1.0 - classwise) / (classwise + 1.0) * mar_diff).unsqueeze(1)
    out_x = main(fx) + alpha[y] * betabase[y]
    lx, lx1 = F.cross_entropy(out_x, y), F.cross_entropy(aux(fx), y)
    conf, targets_u = torch.softmax(main(uw).detach(), -1).max(-1)
    mask = conf.ge(th)
    mask2, t2 = torch.cat([mask, mask]), torch.cat([targets_u, targets_u])
    out_s2 = torch.cat([main(us), main(us1)]) + alpha[t2] * betabase[t2]
    conf1 = torch.softmax(aux(uw).detach(), -1).max(-1).values
    confw, mask1 = torch.cat([conf1, conf1]), torch.cat([conf1.ge(th_min)] * 2)
    lu = (F.cross_entropy(out_s2, t2, reduction="none") * confw * mask1).mean() if mask1.sum() > 0 else 0
    onehot = torch.zeros(2 * len(uw), C).scatter(1, t2.reshape(-1, 1), 1)
    onehot = onehot * (1 - smoothing) + (1 - onehot) * smoothing / (C - 1)
    logp1 = F.log_softmax(torch.cat([aux(us), aux(us1)]), -1)
    lu1 = torch.sum(-onehot * logp1, 1)[mask2].mean() if mask2.sum() > 0 else 0
    select = conf.ge(0.7)
    selected[uidx[select]] = targets_u[select]
    return lx + lx1 + lu * w_con + lu1


def linear_heads(seed=0):
    torch.manual_seed(seed)
    main, aux = torch.nn.Linear(5, C, bias=False), torch.nn.Linear(5, C, bias=False)
    with torch.no_grad():
        main.weight.mul_(5)
        aux.weight.copy_(main.weight * 0.7)
    return Heads(main, aux)


def test_default_finessl_step_equals_the_official_trainer_over_steps():
    h, n_unlabeled = linear_heads(), 12
    alg = build_algorithm(AlgorithmConfig(name="finessl"), C, n_unlabeled)
    alg.on_epoch_start(0)
    state = {"selected": torch.full((n_unlabeled,), -1, dtype=torch.long), "classwise": torch.zeros(C)}
    g = torch.Generator().manual_seed(5)
    saw_margin = saw_unconfident_revisit = False
    for step in range(8):
        fx, y = torch.randn(4, 5, generator=g), torch.randint(C, (4,), generator=g)
        uw, us, us1 = (torch.randn(6, 5, generator=g) for _ in range(3))
        uidx = torch.randperm(n_unlabeled, generator=g)[:6]
        before = state["selected"].clone()
        expected = official_step(h.main, h.aux, fx, y, uw, us, us1, uidx, state)
        out = alg.step(h, fx, y, UnlabeledViews(uw, [us, us1]), uidx)
        assert torch.isclose(out.loss, torch.as_tensor(expected), atol=1e-5), step
        assert torch.equal(alg.pace.slots, state["selected"])
        saw_margin |= bool(alg.margins.abs().sum() > 0)
        unconf = out.probs_main.max(1).values < 0.7
        saw_unconfident_revisit |= bool((before[uidx[unconf]] >= 0).any())
    assert saw_margin and saw_unconfident_revisit, "the fixture must exercise margins and item 4"


# -- items 1-5: loss semantics ---------------------------------------------------------------------------

def small_batch(seed=1, u=6):
    g = torch.Generator().manual_seed(seed)
    fx, y = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    views = UnlabeledViews(torch.randn(u, 5, generator=g), [torch.randn(u, 5, generator=g) for _ in range(2)])
    return fx, y, views, torch.arange(u)


def finessl(**opts):
    cfg = AlgorithmConfig(name="finessl")
    for k, v in opts.items():
        setattr(cfg.finessl, k, v)
    return build_algorithm(cfg, C, 6)


def test_item1_both_strong_views_reach_the_main_loss():
    h = linear_heads()
    for views, grads in (("both", (True, True)), ("split", (True, False))):
        fx, y, u, idx = small_batch()
        for s in u.strong:
            s.requires_grad_(True)
        finessl(strong_views=views, smoothing=0.5).step(h, fx, y, u, idx).loss.backward()
        # the aux head reads detached features, so strong-view gradients come from the main loss alone
        assert tuple(bool(s.grad is not None and s.grad.abs().sum() > 0) for s in u.strong) == grads


def test_item2_aux_loss_is_the_mean_over_masked_rows():
    h = linear_heads()
    fx, y, u, idx = small_batch()
    masked = finessl(aux_mean="masked").step(h, fx, y, u, idx)
    batch = finessl(aux_mean="batch").step(h, fx, y, u, idx)
    ratio = masked.mask.mean().item()
    assert 0 < ratio < 1
    assert float(masked.logs["loss_u_aux"]) * ratio == pytest.approx(float(batch.logs["loss_u_aux"]), rel=1e-5)
    cfg = AlgorithmConfig(name="finessl", threshold=1.0)  # nothing masked: the official 0, not NaN
    none = build_algorithm(cfg, C, 6).step(h, fx, y, u, idx)
    assert float(none.logs["loss_u_aux"]) == 0.0 and torch.isfinite(none.loss)


def test_item3_margins_come_from_the_pace_before_the_batch():
    h = linear_heads()
    fx, y, u, idx = small_batch()
    before, after = finessl(margin_timing="before"), finessl(margin_timing="after")
    before.step(h, fx, y, u, idx)
    after.step(h, fx, y, u, idx)
    assert before.margins.abs().sum() == 0 and after.margins.abs().sum() > 0
    assert torch.equal(before.pace.counts, after.pace.counts)  # same pace once the step is over


def test_item4_only_confident_predictions_write_a_slot():
    pace = LearningPace(3, 2, zeta=0.7)  # write="confident", the official form
    pace.update(torch.tensor([0, 1]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    pace.update(torch.tensor([0, 2]), torch.tensor([[0.6, 0.4], [0.5, 0.5]]))  # unconfident: slots keep labels
    assert pace.slots.tolist() == [0, 1, -1] and pace.counts.tolist() == [1, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # the O(batch) counts always equal a recount of the slots
        pace.update(torch.randint(3, (4,), generator=g), torch.softmax(3 * torch.randn(4, 2, generator=g), 1))
        assert pace.counts.tolist() == [int((pace.slots == k).sum()) for k in range(2)]


def test_item5_weight_floor_is_the_official_th_min():
    h = linear_heads()
    fx, y, u, idx = small_batch()
    out = finessl(weight_floor=0.5).step(h, fx, y, u, idx)
    psi = torch.softmax(h.aux(u.weak), 1).max(1).values
    assert ((psi >= 0.5).any() and (psi < 0.5).any())
    torch.testing.assert_close(out.weight, psi * (psi >= 0.5))


# -- items 6-7: heads --------------------------------------------------------------------------------------

def test_item6_random_init_is_unit_norm_uniform_rows():
    w = random_unit_rows(7, 768, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w.norm(dim=1), torch.ones(7))
    raw = torch.rand(7, 768, generator=torch.Generator().manual_seed(0)) * 2 - 1  # same draws, before renorm
    torch.testing.assert_close(w, raw / raw.norm(dim=1, keepdim=True))
    official = resolve("embedded", sets=["fidelity=official"]).resolved()
    clean = resolve("embedded", sets=["fidelity=clean"]).resolved()
    assert official.model.head_init == "random" and clean.model.head_init == "class_mean"  # no text tower
    assert resolve("cifar100_n4", sets=["fidelity=clean"]).resolved().model.head_init == "text"


def test_item7_scale_learned_directly_or_as_log():
    direct, log = CosineHead(3, 2, scale_param="direct"), CosineHead(3, 2, scale_param="log")
    assert direct.logit_scale.item() == pytest.approx(1 / 0.07) and log.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        log.weight.copy_(direct.weight)
    f, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    lr = 1e-4
    steps = []
    for head in (direct, log):
        F.cross_entropy(head(f), y).backward()
        s0 = head.scale.item()
        with torch.no_grad():
            for p in head.parameters():
                p -= lr * p.grad
        steps.append(head.scale.item() - s0)
    # d/d(log s) = s * d/ds, and a step dlog moves s by s*dlog: the log form moves s ~s^2 (~204x) further
    assert steps[1] / steps[0] == pytest.approx((1 / 0.07) ** 2, rel=0.01)
    with pytest.raises(UserError, match="scale_param"):
        CosineHead(3, 2, scale_param="exp")


# -- items 8-9: optimiser ----------------------------------------------------------------------------------

def test_item8_weight_decay_on_every_tuned_tensor():
    head = CosineHead(3, 2, scale_param="direct")
    params = list(head.parameters())
    (everything,) = param_groups(params, 5e-4, "all")
    assert everything["weight_decay"] == 5e-4 and len(everything["params"]) == 2
    decay, no_decay = param_groups(params, 5e-4, "matrices")
    assert [p.ndim for p in decay["params"]] == [2] and [p.ndim for p in no_decay["params"]] == [0]
    assert no_decay["weight_decay"] == 0.0


def test_item9_cosine_stepped_once_per_epoch_like_cosine_annealing_lr():
    cfg = Config()
    cfg.run.epochs, cfg.run.steps_per_epoch = 5, 3
    cfg.optim.schedule_unit = "auto"  # official: epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    for epoch in range(5):
        for j in range(3):
            assert lr_factor(epoch * 3 + j, cfg) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cfg.fidelity = "clean"  # per step: changes within an epoch
    assert lr_factor(1, cfg) < lr_factor(0, cfg)


# -- items 10-14: data -------------------------------------------------------------------------------------

def replay_view(n=10, batch=4, spe=6):
    return SplitView(labeled=np.arange(100, 100 + n), unlabeled=np.arange(20), targets=np.arange(200) % 3,
                     ood=np.zeros(200, bool), batch_size=batch, unlabeled_batch=4, seed=3,
                     labeled_stream="replay", steps_per_epoch=spe)


def test_item10_labeled_stream_replays_the_epochs_first_pass():
    view = replay_view()
    epoch0 = [tuple(view.draw(s)[0]) for s in range(6)]
    assert epoch0[0::2] == [epoch0[0]] * 3 and epoch0[1::2] == [epoch0[1]] * 3 and epoch0[0] != epoch0[1]
    seen = set(epoch0[0]) | set(epoch0[1])
    assert len(seen) == 8  # drop_last: 2 of the 10 labeled images sit out the epoch
    assert [tuple(view.draw(s)[0]) for s in (6, 7)] != epoch0[:2]  # a new shuffle next epoch
    assert [replayed_step(s, 6, 10, 4) for s in range(8)] == [0, 1, 0, 1, 0, 1, 6, 7]
    # the replayed batch is the same views too (cached features: the same cached view per image)
    feats = torch.randn(3, 200, 2)
    src = FeatureBatches(feats, feats, view, "cpu")
    assert torch.equal(src[0].x, src[4].x) and not torch.equal(src[0].u_weak, src[4].u_weak)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(200)]

    class D:
        image_size, resize, crop_padding, hflip, randaugment_ops, randaugment_magnitude, cutout = 6, 8, 2, True, 2, 10, 0.5
        strong_aug, test_view = "auto", "auto"

    from finessl_lab.data.batches import ImageBatches

    img = ImageBatches(images, view, build_transforms(D, (0, 0, 0), (1, 1, 1)), 0, 6)
    assert torch.equal(img[0].x, img[2].x) and torch.equal(img[1].x, img[5].x)  # same images, same augmentation
    fresh = SplitView(**{**view.__dict__, "labeled_stream": "fresh"})
    assert tuple(fresh.draw(0)[0]) != tuple(fresh.draw(2)[0]) or tuple(fresh.draw(0)[0]) != tuple(fresh.draw(4)[0])
    with pytest.raises(UserError, match="fewer than optim.batch_size=16"):
        replay_view(batch=16).draw(0)


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 40)
    img = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, rng.integers(0, 256, (40, 40))], -1)
    return Image.fromarray(img.astype(np.uint8))


@pytest.mark.parametrize("v", [1, 9])
def test_item11_randaugment_mc_op_magnitudes(photo, v):
    f = 0.09 * v + 0.05  # 0.14 .. 0.86
    checks = {
        "Brightness": ImageEnhance.Brightness(photo).enhance(f), "Color": ImageEnhance.Color(photo).enhance(f),
        "Contrast": ImageEnhance.Contrast(photo).enhance(f), "Sharpness": ImageEnhance.Sharpness(photo).enhance(f),
        "Posterize": ImageOps.posterize(photo, int(0.4 * v) + 4), "Solarize": ImageOps.solarize(photo, 256 - int(25.6 * v)),
        "AutoContrast": ImageOps.autocontrast(photo), "Equalize": ImageOps.equalize(photo), "Identity": photo,
    }
    for name, expected in checks.items():
        assert np.array_equal(np.asarray(ramc.OPS[name](photo, v)), np.asarray(expected)), name
    assert {1: (4, 231), 9: (7, 26)}[v] == (int(0.4 * v) + 4, 256 - int(25.6 * v))
    w = photo.size[0]
    signed = {"Rotate": [photo.rotate(s * 3 * v) for s in (1, -1)],
              "ShearX": [photo.transform(photo.size, Image.AFFINE, (1, s * 0.03 * v, 0, 0, 1, 0)) for s in (1, -1)],
              "ShearY": [photo.transform(photo.size, Image.AFFINE, (1, 0, 0, s * 0.03 * v, 1, 0)) for s in (1, -1)],
              "TranslateX": [photo.transform(photo.size, Image.AFFINE, (1, 0, int(s * 0.03 * v * w), 0, 1, 0)) for s in (1, -1)],
              "TranslateY": [photo.transform(photo.size, Image.AFFINE, (1, 0, 0, 0, 1, int(s * 0.03 * v * w))) for s in (1, -1)]}
    for name, (pos, neg) in signed.items():
        outs = {seeded(lambda im: np.asarray(ramc.OPS[name](im, v)).tobytes(), photo, s) for s in range(12)}
        assert outs == {np.asarray(pos).tobytes(), np.asarray(neg).tobytes()}, name


def test_item11_randaugment_mc_draws(photo, monkeypatch):
    calls = []
    aug = RandAugmentMC(2, 10, cutout=0)
    aug.ops = [lambda im, v, k=k: calls.append((k, v)) or im for k in range(14)]
    torch.manual_seed(0)
    for _ in range(3000):
        aug(photo)
    ops, mags = zip(*calls)
    assert set(mags) == set(range(1, 10)) and set(ops) == set(range(14))
    assert len(calls) / 6000 == pytest.approx(0.5, abs=0.03)  # each drawn op applied with p = 0.5
    with pytest.raises(UserError, match="2 <= m <= 10"):
        RandAugmentMC(2, 1)


def test_item11_fixed_16px_cutout(photo):
    grey = np.full(3, 127, np.uint8)
    for s in range(20):
        out = np.asarray(seeded(cutout_abs, photo, s))
        ys, xs = np.nonzero((out == grey).all(-1) & (np.asarray(photo) != grey).any(-1))
        assert 0 < np.ptp(xs) + 1 <= 17 and 0 < np.ptp(ys) + 1 <= 17
    full = [np.asarray(seeded(cutout_abs, Image.new("RGB", (224, 224)), s)).any(-1).sum() for s in range(20)]
    assert max(full) == 17 * 17  # an interior box: PIL's inclusive rectangle paints 17 x 17


def test_item11_12_transforms_and_cache_key(photo):
    class D:
        image_size, resize, crop_padding, hflip, randaugment_ops, randaugment_magnitude, cutout = 24, 32, 3, True, 2, 10, 0.5
        strong_aug, test_view = "auto", "auto"

    off = build_transforms(D, (0, 0, 0), (1, 1, 1))
    wide = photo.crop((0, 0, 40, 20))
    torch.testing.assert_close(off.test(wide), TF.to_tensor(TF.resize(wide, [24, 24])))  # item 12: whole image
    assert any("RandAugmentMC" in repr(t) for t in off.strong.transforms)
    D.strong_aug, D.test_view = "randaugment", "center_crop"
    clean = build_transforms(D, (0, 0, 0), (1, 1, 1))
    assert clean.test(wide).shape == (3, 24, 24) and not torch.equal(clean.test(wide), off.test(wide))
    c_off = resolve("embedded", sets=["fidelity=official"]).resolved()
    c_clean = resolve("embedded", sets=["fidelity=clean"]).resolved()
    keys = [transform_description(c, (0,), (1,)) for c in (c_off, c_clean)]
    assert keys[0] != keys[1] and keys[0]["strong_aug"] == "randaugment_mc"
    c_mc_only = resolve("embedded", sets=["fidelity=clean", "data.strong_aug=randaugment_mc"]).resolved()
    assert transform_description(c_mc_only, (0,), (1,)) != keys[1]


def test_item13_normalisation_per_dataset():
    assert resolve("cifar10_n4").resolved().data.normalize == "cifar"
    assert resolve_normalization("cifar", "cifar10") == NORMALIZATION["cifar10"]
    assert resolve_normalization("cifar", "cifar100") == NORMALIZATION["cifar100"]
    assert resolve("food101_n4").resolved().data.normalize == "imagenet"
    assert resolve("food101_n4", sets=["fidelity=clean"]).resolved().data.normalize == "backbone"


def test_item14_first_n_per_class_split(tmp_path):
    targets = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    a = make_split(targets, 3, 2, order="first", seed=1)
    b = make_split(targets, 3, 2, order="first", seed=7)
    assert a.labeled.tolist() == [0, 1, 2, 3, 4, 5] == b.labeled.tolist()  # first 2 indices of each class
    assert set(a.labeled) <= set(a.unlabeled) and len(a.unlabeled) == 12
    seeded_split = make_split(targets, 3, 2, order="seeded", seed=1)
    assert seeded_split.labeled.tolist() != a.labeled.tolist() or make_split(targets, 3, 2, seed=2).labeled.tolist() != a.labeled.tolist()
    cached = cached_split(tmp_path, "toy", targets, 3, 2, seed=1, order="first")
    assert cached.labeled.tolist() == a.labeled.tolist()
    with pytest.raises(UserError, match="split order"):
        make_split(targets, 3, 2, order="last")


# -- item 15: precision ------------------------------------------------------------------------------------

def test_item15_fp16_pure_is_a_clear_error_on_cpu():
    with pytest.raises(UserError, match="fp16_pure.*needs a CUDA device"):
        resolve_precision("fp16_pure", torch.device("cpu"))
    assert resolve("embedded", sets=["run.precision=fp16_pure"]).run.precision == "fp16_pure"


# -- the switch ----------------------------------------------------------------------------------------------

def test_switch_fills_only_auto_items_and_records_them():
    cfg = resolve("embedded", sets=["fidelity=clean", "data.split_order=first"])
    assert cfg.fidelity == "clean" and cfg.data.split_order == "first" and cfg.data.strong_aug == "auto"
    r = cfg.resolved()
    assert r.data.split_order == "first"  # explicit: never overridden
    assert r.data.strong_aug == "randaugment" and r.optim.schedule_unit == "step" and r.model.scale_param == "log"
    assert all(get_dotted(r, k) != "auto" for k in ITEMS)
    assert explicit_items(cfg) == {"data.split_order": "first"}
    assert cfg.data.strong_aug == "auto"  # resolved() is a copy
    # a run's config.yaml holds concrete values; it still matches the config it came from
    again = Config.from_dict(yaml_roundtrip(r))
    assert diff(again, cfg) == [] and "fidelity: clean" in r.to_yaml()
    assert diff(again, resolve("embedded", sets=["fidelity=official", "data.split_order=first"])) != []
    for name, p in PRESETS.items():  # paper presets reproduce the official code; offline counterparts are clean
        offline = resolve(name).data.dataset in ("mnist5k", "fashion_mnist", "fashion5k")
        assert resolve(name).fidelity == ("clean" if offline else "official"), name


def yaml_roundtrip(cfg):
    import yaml

    return yaml.safe_load(cfg.to_yaml())


def test_cli_fidelity_flag():
    args = build_parser().parse_args(["train", "--preset", "embedded", "--fidelity", "clean"])
    assert config_from_args(args).fidelity == "clean"
    with pytest.raises(UserError):
        build_parser().parse_args(["train", "--fidelity", "paper"])
    with pytest.raises(UserError, match="fidelity"):
        resolve("embedded", sets=["fidelity=paper"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16_pure needs CUDA")
def test_item15_fp16_pure_on_cuda_updates_half_weights_without_a_scaler():
    from finessl_lab.device import autocast, grad_scaler, weight_dtype

    dev = torch.device("cuda")
    assert resolve_precision("fp16_pure", dev) == "fp16_pure" and weight_dtype("fp16_pure") == torch.float16
    assert not grad_scaler(dev, "fp16_pure").is_enabled()
    head = CosineHead(8, 3, scale_param="direct").to(dev, torch.float16)
    opt = torch.optim.SGD(param_groups(list(head.parameters()), 5e-4, "all"), lr=0.03, momentum=0.9)
    with autocast(dev, "fp16_pure"):
        loss = F.cross_entropy(head(torch.randn(4, 8, device=dev, dtype=torch.float16)), torch.tensor([0, 1, 2, 0], device=dev))
    loss.backward()
    before = head.weight.detach().clone()
    opt.step()
    assert head.weight.dtype == torch.float16 and not torch.equal(before, head.weight)


def test_run_records_fidelity_and_implied_items_and_resumes(tmp_path):
    from finessl_lab.trainer import Trainer, train

    small = ["data.subsample_per_class=20", "run.epochs=1", "run.steps_per_epoch=5", "run.progress=false",
             "data.num_workers=0", "fidelity=clean", "optim.decay_scope=all"]
    cfg = resolve("embedded", sets=small)
    train(cfg, tmp_path / "run")
    stored = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert stored.fidelity == "clean" and stored.optim.decay_scope == "all"
    assert all(get_dotted(stored, k) != "auto" for k in ITEMS)
    assert stored.data.strong_aug == "randaugment" and stored.model.scale_param == "log"
    Trainer(resolve("embedded", sets=small), tmp_path / "run", resume=True)  # the preset + sets still match
    with pytest.raises(UserError, match="fidelity: 'clean' -> 'official'"):
        Trainer(resolve("embedded", sets=small[:-2] + ["fidelity=official", "optim.decay_scope=all"]), tmp_path / "run", resume=True)
