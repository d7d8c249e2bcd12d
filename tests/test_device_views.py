"""data.views=device (finessl_lab/data/device_views.py): every batched torch op equals its PIL op (the reference
RandAugmentMC ops of randaugment_mc.py, which call Pillow) pixel for pixel on random images; a whole strong view
equals the PIL ops composed with the same parameters; the parameters have RandAugmentMC's distribution; the
views are a pure function of (seed, step) on any rank split and resume; training runs end to end."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from finessl_lab.data import device_views as dv
from finessl_lab.data.batches import ImageBatches, SplitView
from finessl_lab.data.randaugment_mc import CUTOUT_FILL, OPS, RandAugmentMC
from finessl_lab.data.transforms import build_transforms, normalize_uint8
from finessl_lab.errors import UserError

MEAN, STD = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)


def _arrays(n, h, w, c, seed=0):
    """Random uint8 images [n, h, w, c] with a few hard cases: constant, two-level, narrow-range, full-range."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    if n >= 4:
        out[0] = 77                                                       # constant: autocontrast / equalize identity
        out[1] = rng.choice(np.array([3, 250], dtype=np.uint8), (h, w, c))  # two levels
        out[2] = rng.integers(100, 110, (h, w, c), dtype=np.uint8)          # narrow range
        out[3, : h // 2] = 255                                            # a saturated block
    return out


def _pil(a):
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def _np(img, c):
    return np.asarray(img).reshape(img.size[1], img.size[0], c)


def _tensor(arrs):
    return torch.from_numpy(np.ascontiguousarray(arrs)).permute(0, 3, 1, 2).contiguous()


def _gen_with_sign(negative: bool) -> torch.Generator:
    """A generator whose first torch.rand draw makes randaugment_mc._signed take the given sign."""
    for s in range(100):
        g = torch.Generator().manual_seed(s)
        if (torch.rand((), generator=torch.Generator().manual_seed(s)).item() < 0.5) == negative:
            return g
    raise AssertionError


def _one_group(x, name, v, negative=False):
    """Apply op ``name`` at magnitude ``v`` (sign ``negative``) to every image of ``x`` with the device code."""
    m = len(x)
    mags = torch.full((m,), v, dtype=torch.int64)
    if name in dv.LUT_OPS:
        return dv.lut_ops(x, (name,), [m], mags)
    if name in dv.BLEND_OPS:
        return dv.blend_ops(x, (name,), [m], mags)
    h, w = x.shape[2:]
    co = torch.from_numpy(np.array(dv.affine_table(w, h)[dv.AFFINE_OPS.index(name), v, int(negative)])).expand(m, 6)
    return dv.affine(x, co)


SIZES = [(32, 32), (9, 13), (17, 6)]


@pytest.mark.parametrize("name", sorted(set(OPS) - {"Identity"}))
@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("h, w", SIZES)
def test_each_op_equals_pil_pixel_for_pixel(name, c, h, w):
    arrs = _arrays(8, h, w, c, seed=h * w + c)
    x = _tensor(arrs)
    signs = (False, True) if name in dv.AFFINE_OPS else (False,)
    for v in range(1, 10):
        for negative in signs:
            got = _one_group(x.clone(), name, v, negative).permute(0, 2, 3, 1).numpy()
            for k, a in enumerate(arrs):
                want = _np(OPS[name](_pil(a), v, _gen_with_sign(negative)), c)
                diff = np.abs(got[k].astype(int) - want.astype(int))
                assert diff.max() == 0, (name, v, negative, k, int(diff.max()), int((diff > 0).sum()))


def test_the_ops_change_images_and_mixed_groups_equal_one_op_at_a_time():
    """A group holding several ops (as in a slot) gives each image its own op; the ops are not identities."""
    arrs = _arrays(12, 16, 16, 3, seed=5)
    x = _tensor(arrs)
    for names, fn in ((dv.LUT_OPS, dv.lut_ops), (dv.BLEND_OPS, dv.blend_ops)):
        counts = [3] * len(names)
        mags = torch.tensor([7, 2, 9] * len(names))
        got = fn(x[:3 * len(names)], names, counts, mags)
        for k, name in enumerate(names):
            for j, v in enumerate((7, 2, 9)):
                r = 3 * k + j
                assert torch.equal(got[r:r + 1], _one_group(x[r:r + 1], name, v)), (name, v)
        assert not torch.equal(got, x[:3 * len(names)])


def test_crop_flip_equals_slicing_and_cutout_equals_pil_rectangle():
    arrs = _arrays(6, 20, 22, 3, seed=1)
    x = _tensor(arrs)
    p = torch.zeros(6, dv.SLOT0, dtype=torch.int64)
    p[:, dv.SRC] = torch.tensor([5, 0, 3, 3, 1, 2])
    p[:, dv.TOP] = torch.tensor([0, 4, 8, 1, 0, 3])
    p[:, dv.LEFT] = torch.tensor([0, 6, 2, 10, 0, 1])
    p[:, dv.FLIP] = torch.tensor([0, 1, 0, 1, 1, 0])
    got = dv.crop_flip(x, p, (12, 11)).permute(0, 2, 3, 1).numpy()
    for k in range(6):
        s, i, j, f = p[k, :4].tolist()
        want = arrs[s][i:i + 12, j:j + 11]
        assert np.array_equal(got[k], want[:, ::-1] if f else want)
    # cutout: PIL's inclusive rectangle (x0, y0, min(w, x0 + 16), min(h, y0 + 16)), clipped; x0 < 0 = none
    big = _tensor(_arrays(5, 32, 28, 3, seed=2))
    x0, y0 = torch.tensor([0, 20, 5, 27, -1]), torch.tensor([0, 3, 25, 31, 0])
    got = dv.cutout(big, x0, y0, 16).permute(0, 2, 3, 1).numpy()
    for k in range(5):
        img = _pil(big[k].permute(1, 2, 0).numpy())
        if x0[k] >= 0:
            a, b = int(x0[k]), int(y0[k])
            ImageDraw.Draw(img).rectangle((a, b, min(28, a + 16), min(32, b + 16)), fill=(CUTOUT_FILL,) * 3)
        assert np.array_equal(got[k], np.asarray(img))


# -- whole views ------------------------------------------------------------------------------------------------
def _cfg(**kw):
    base = dict(image_size=16, resize=16, crop_padding=3, hflip=True, randaugment_ops=2, randaugment_magnitude=10,
                cutout=0.5, strong_aug="auto", test_view="auto", views="device")
    return SimpleNamespace(**{**base, **kw})


def _images(n, size=(16, 16), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


def _source(imgs, cfg=None, first=0, rank=(0, 1), seed=3, n_lab=8, n_unl=24):
    t = build_transforms(cfg or _cfg(), MEAN, STD, uint8=True, device_views=True)
    view = SplitView(labeled=np.arange(n_lab), unlabeled=np.arange(len(imgs)),
                     targets=np.arange(len(imgs)) % 4, ood=np.zeros(len(imgs), dtype=bool), batch_size=4,
                     unlabeled_batch=n_unl and 12, seed=seed)
    return ImageBatches(imgs, view, t, first, 50, rank=rank), t


def _made(batch):
    return batch.normalized(MEAN, STD)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("cfg", [_cfg(), _cfg(hflip=False, randaugment_ops=4, randaugment_magnitude=5),
                                 _cfg(crop_padding=0, resize=20), _cfg(cutout=0.0), _cfg(resize=17)])
def test_whole_views_equal_the_pil_ops_composed_with_the_same_parameters(mode, cfg):
    """Each view = PIL: crop of the padded image, flip, the drawn ops in order (magnitude, sign), cutout.
    (resize=17: images of three shapes, gathered zero-filled to the largest, each cropped within its own size.)"""
    if cfg.resize == 17:
        imgs = [im for k in range(10) for im in (_images(1, (16, 16), mode, seed=k) + _images(1, (24, 17), mode,
                                                 seed=50 + k) + _images(1, (17, 30), mode, seed=90 + k))]
    else:
        imgs = _images(30, (18, 16) if cfg.resize == 20 else (16, 16), mode, seed=11)
    src, t = _source(imgs, cfg)
    on = t.on_device
    ra = on.strong
    for step in (0, 7):
        batch = src[step]
        made = batch.views.make(batch.x)
        x, u = made[:4], made[4:]
        lab, pos = src.split.draw(step)
        uidx = src.split.unlabeled[pos]
        streams = [(10, lab, x, None), (11, uidx, u[:12], None), (12, uidx, u[12:24], ra), (13, uidx, u[24:], ra)]
        for stream, idx, views, strong in streams:
            d = dv.draw(dv.view_generator(src.split.seed, stream, step), len(idx), strong)
            for k, i in enumerate(idx):
                a = src._padded[i]
                hp, wp = a.shape[:2]
                top = int(np.floor(d.crop[k, 0].item() * (hp - 16 + 1)))
                left = int(np.floor(d.crop[k, 1].item() * (wp - 16 + 1)))
                want = a[top:top + 16, left:left + 16]
                if cfg.hflip and d.flip[k]:
                    want = want[:, ::-1]
                if strong is not None:
                    img = _pil(np.ascontiguousarray(want))
                    for s in range(strong.n):
                        if d.apply[k, s]:
                            name = dv.OP_NAMES[int(d.ops[k, s])]
                            img = OPS[name](img, int(d.mags[k, s]), _gen_with_sign(bool(d.negative[k, s])))
                    if strong.cutout:
                        u0, v0 = d.cutout[k].tolist()
                        x0, y0 = int(max(0.0, u0 * 16 - 8)), int(max(0.0, v0 * 16 - 8))
                        ImageDraw.Draw(img).rectangle((x0, y0, min(16, x0 + 16), min(16, y0 + 16)),
                                                      fill=CUTOUT_FILL if mode == "L" else (CUTOUT_FILL,) * 3)
                    want = _np(img, a.shape[2])
                got = views[k].permute(1, 2, 0).numpy()
                assert np.array_equal(got, want), (stream, step, k)


def test_drawn_parameters_follow_randaugment_mc():
    """n ops with replacement, uniform over the 14; each applied with p = 0.5; magnitudes uniform on 1 .. m-1;
    signs p = 0.5; flips p = 0.5; crop offsets uniform over the 2 pad + 1 positions."""
    n = 40_000
    ra = RandAugmentMC(2, 10)
    d = dv.draw(torch.Generator().manual_seed(0), n, ra)
    ops, mags = d.ops.numpy(), d.mags.numpy()
    assert ops.shape == (n, 2) and ops.min() == 0 and ops.max() == 13
    freq = np.bincount(ops.ravel(), minlength=14) / ops.size
    assert np.abs(freq - 1 / 14).max() < 0.006
    assert abs((ops[:, 0] == ops[:, 1]).mean() - 1 / 14) < 0.006  # with replacement
    assert mags.min() == 1 and mags.max() == 9
    assert np.abs(np.bincount(mags.ravel(), minlength=10)[1:] / mags.size - 1 / 9).max() < 0.006
    for flags in (d.apply, d.negative, d.flip):
        assert abs(flags.double().mean().item() - 0.5) < 0.01
    assert abs(float(d.apply[:, 0].logical_and(d.apply[:, 1]).double().mean()) - 0.25) < 0.01  # independent
    m5 = dv.draw(torch.Generator().manual_seed(1), n, RandAugmentMC(3, 5))
    assert m5.ops.shape == (n, 3) and m5.mags.min() == 1 and m5.mags.max() == 4
    # crop offsets: 16 px images padded by 3 -> 22 px, 7 positions, uniform
    on = build_transforms(_cfg(), MEAN, STD, uint8=True, device_views=True).on_device
    p = on.params(d, slice(0, n), np.full((n, 2), 22), np.zeros(n, dtype=np.int64))
    for col in (dv.TOP, dv.LEFT):
        counts = np.bincount(p[:, col], minlength=7)
        assert len(counts) == 7 and np.abs(counts / n - 1 / 7).max() < 0.01
    # the cutout corner: int(max(0, U * 16 - 8)), so 0 when U < 9/16, else 1 .. 7 uniformly
    assert abs((p[:, dv.CUT_X] == 0).mean() - 9 / 16) < 0.01 and p[:, dv.CUT_X].max() == 7
    assert np.abs(np.bincount(p[:, dv.CUT_Y], minlength=8)[1:] / n - 1 / 16).max() < 0.006


def test_views_are_a_pure_function_of_seed_and_step_across_ranks_and_resume():
    imgs = _images(40, seed=4)
    a, _ = _source(imgs)
    b, _ = _source(imgs)
    resumed, _ = _source(imgs, first=5)
    for step in (0, 5, 6):
        ba, bb = _made(a[step]), _made(b[step])
        for name in ("x", "u_weak", "u_strong1", "u_strong2", "y", "u_index"):
            assert torch.equal(getattr(ba, name), getattr(bb, name))
        if step >= 5:
            br = _made(resumed[step - 5])
            assert all(torch.equal(getattr(ba, n), getattr(br, n)) for n in ("x", "u_weak", "u_strong1", "u_strong2"))
    b0, b1 = _made(a[0]), _made(a[1])
    assert not torch.equal(b0.u_strong1, b1.u_strong1)
    assert not torch.equal(b0.u_strong1, b0.u_strong2)  # two strong streams
    assert b0.x.dtype == torch.float32 and b0.x.device.type == "cpu" and b0.x.shape == (4, 3, 16, 16)
    assert b0.u_strong2.shape == (12, 3, 16, 16) and b0.views is None
    # torchrun: each rank draws for the global batch and keeps its rows; the halves make the 1-process batch
    halves = [_made(_source(imgs, rank=(r, 2))[0][3]) for r in range(2)]
    whole = _made(a[3])
    for name in ("x", "u_weak", "u_strong1", "u_strong2"):
        assert torch.equal(torch.cat([getattr(h, name) for h in halves]), getattr(whole, name))
    # the views equal their normalised uint8 views (normalize_uint8 of the made uint8 views)
    raw = a[2]
    views = raw.views.make(raw.x)
    made = _made(raw)
    assert torch.equal(made.x, normalize_uint8(views[:4], MEAN, STD))
    assert torch.equal(made.u_strong2, normalize_uint8(views[4 + 24:], MEAN, STD))


def test_labeled_only_batches():
    """Algorithms without unlabeled data: only the labeled weak views are made."""
    imgs = _images(20, seed=8)
    src, _ = _source(imgs, n_unl=0)
    raw = src[1]
    assert raw.x.shape == (4, 3, 22, 22) and raw.u_index is None and raw.views.strong_rows == 0
    made = _made(raw)
    assert made.x.shape == (4, 3, 16, 16) and made.u_weak is None and made.u_strong1 is None
    assert torch.equal(made.x, _made(_source(imgs)[0][1]).x)  # the labeled views do not depend on the rest


def test_pending_batches_move_and_pin_with_their_parameters(monkeypatch):
    imgs = _images(20, seed=6)
    batch = _source(imgs)[0][0]
    assert batch.views.device.type == "cpu" and batch.x.dtype == torch.uint8 and batch.u_weak is None
    assert batch.x.shape == (4 + 12, 3, 22, 22)  # the padded images, labeled then unlabeled
    moved = batch.to("cpu")
    assert moved.views is not batch.views and torch.equal(moved.views.params, batch.views.params)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: self.clone())  # (no CUDA needed)
    pinned = batch.pin_memory()
    assert torch.equal(_made(pinned).u_strong1, _made(batch).u_strong1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_views_equal_cpu_views():
    imgs = _images(40, (32, 32), seed=9)
    src, _ = _source(imgs, _cfg(image_size=32, resize=32, crop_padding=4, randaugment_ops=4))
    for step in range(4):
        b = src[step]
        cpu, gpu = _made(b), _made(b.to("cuda"))
        for name in ("x", "u_weak", "u_strong1", "u_strong2"):
            assert torch.equal(getattr(cpu, name), getattr(gpu, name).cpu()), (step, name)


def test_bad_values_and_unsupported_settings_fail_in_one_line():
    from finessl_lab.presets import resolve

    with pytest.raises(UserError, match=r"data.views='gpu' is not valid.*valid: worker, device"):
        resolve("embedded", sets=["data.views=gpu"]).validate()
    with pytest.raises(UserError, match="data.strong_aug=randaugment_mc"):
        build_transforms(_cfg(strong_aug="randaugment"), MEAN, STD, device_views=True)
    from finessl_lab.build import build_experiment
    with pytest.raises(UserError, match="data.strong_aug=randaugment_mc"):  # before any data or weights load
        build_experiment(resolve("embedded", sets=["data.views=device", "data.dataset=imagefolder",
                                                   "data.root=/nonexistent", "run.feature_cache=false"]))
    src, _ = _source([im.convert("RGBA") for im in _images(20)])
    with pytest.raises(UserError, match="RGB or L"):
        src[0]


def test_device_views_train_end_to_end_without_loader_workers(tiny_clip_configs, tmp_path):
    import open_clip

    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer
    from test_image_mode import TINY

    torch.manual_seed(0)
    name = tiny_clip_configs[0]
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), tmp_path / "w.pt")
    sets = [s for s in TINY if not s.startswith(("run.epochs", "data.num_workers"))] + [
        f"model.backbone={name}", f"model.pretrained={tmp_path / 'w.pt'}", "run.feature_cache=false",
        "algorithm.name=finessl", "run.epochs=1", "data.num_workers=2", "data.views=device",
        "data.strong_aug=randaugment_mc"]
    trainer = Trainer(resolve("embedded", sets=sets), None, progress=False)
    loader = trainer.exp.batches(0, 2)
    assert loader.num_workers == 0 and trainer.exp.intra_op_threads is None  # every core trains
    raw = next(iter(loader))
    assert raw.views is not None and raw.u_weak is None
    trainer.fit()
    assert trainer.step == 2
    weights = trainer.exp.model.trainable_state_dict()
    assert any(not torch.equal(v, trainer.exp.initial_state[k]) for k, v in weights.items())
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_padded_bank_gathers_what_stacking_gathers_and_steps_aside_when_it_cannot_hold_the_set(mode):
    """gather from the bank (one uint8 [N, C, H, W] tensor filled on first use) = stacking the padded arrays;
    over budget, or with images of several shapes, the bank gives up and gather stacks as before."""
    t = build_transforms(_cfg(), MEAN, STD, uint8=True, device_views=True)
    on = t.on_device
    imgs = _images(12, mode=mode, seed=5)
    idx = np.array([3, 0, 3, 11, 7])  # a repeat included
    bank = on.cache(imgs)
    got, sizes = on.gather(bank, idx)
    assert bank._bank is not None and bank._filled.sum() == 4  # the bank is in use, holding what was asked
    ref = on.gather(_stacking_cache(imgs, on), idx)
    assert torch.equal(got, ref[0]) and np.array_equal(sizes, ref[1]) and got.dtype == torch.uint8
    again, _ = on.gather(bank, np.array([11, 1]))
    assert torch.equal(again, on.gather(_stacking_cache(imgs, on), np.array([11, 1]))[0])
    small = on.cache(imgs, max_bytes=got[0].numel() * 11)  # 12 images do not fit: no bank
    assert torch.equal(on.gather(small, idx)[0], got) and small._off and small._bank is None
    mixed = imgs[:6] + _images(6, (20, 18), mode, seed=6)
    m = on.cache(mixed)
    on.gather(m, np.array([0, 1]))
    assert m._bank is not None
    both, sz = on.gather(m, np.array([1, 8]))  # a second shape: the bank steps aside, zero-filled stacking
    assert m._off and both.shape[2:] == (max(sz[:, 0]), max(sz[:, 1]))
    assert torch.equal(both, on.gather(_stacking_cache(mixed, on), np.array([1, 8]))[0])


def _stacking_cache(imgs, on):
    """The stacking path's cache (fastviews.PaddedImages), for reference."""
    from finessl_lab.data.fastviews import PaddedImages
    return PaddedImages(imgs, on.resize, on.pad)
