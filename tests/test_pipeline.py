"""The fast image pipeline (issue 13) gives the views of the plain one: torchvision's reflect RandomCrop pixel for
pixel, per-image seeding bit for bit with the RNGs saved once per batch, uint8 transport normalised later equal to
the fp32 views, pinned batches, and the batches of a resumed run."""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from finessl_lab.data.batches import Batch, ImageBatches, SplitView
from finessl_lab.data.transforms import (ReflectRandomCrop, build_transforms, normalize_uint8, seeded, seeded_many,
                                         view_seed)

MEAN, STD = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)


def _images(n, size=(11, 9), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("size, crop, pad", [((11, 9), 9, 4), ((11, 9), (7, 10), 1), ((8, 8), 8, 7), ((5, 5), 5, 6),
                                             ((6, 6), 6, 0)])
def test_reflect_crop_equals_torchvision(mode, size, crop, pad):
    ours, theirs = ReflectRandomCrop(crop, pad), T.RandomCrop(crop, padding=pad or None, padding_mode="reflect")
    for k, img in enumerate(_images(20, size, mode)):
        torch.manual_seed(k)
        a = ours(img)
        state = torch.get_rng_state()
        torch.manual_seed(k)
        b = theirs(img)
        assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b)), k
        assert torch.equal(state, torch.get_rng_state())  # the same draws: the streams after it stay aligned
        torch.manual_seed(k)
        assert torch.equal(ReflectRandomCrop(crop, pad, tensor=True)(img), T.PILToTensor()(b))


def _cfg(**kw):
    d = dict(image_size=8, resize=10, crop_padding=2, hflip=True, randaugment_ops=2, randaugment_magnitude=10,
             cutout=0.5, strong_aug="auto", test_view="auto")
    return SimpleNamespace(**{**d, **kw})


def test_seeded_many_is_seeded_per_image_and_leaves_the_rngs_alone():
    t = build_transforms(_cfg(), MEAN, STD)
    imgs, seeds = _images(6, (12, 12)), [view_seed(3, 12, 5, j) for j in range(6)]
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    many = seeded_many(t.strong, imgs, seeds)
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert np.array_equal(before[2], np.random.get_state()[1])
    for got, img, s in zip(many, imgs, seeds, strict=True):
        assert torch.equal(got, seeded(t.strong, img, s))

    def uses_all_rngs(img):  # a user transform drawing from Python's and NumPy's RNGs too
        return (torch.rand(()).item(), random.random(), np.random.rand())
    assert seeded_many(uses_all_rngs, imgs[:2], seeds[:2]) == [seeded(uses_all_rngs, i, s) for i, s in zip(imgs, seeds[:2])]


@pytest.mark.parametrize("strong_aug", ["randaugment_mc", "randaugment"])
def test_uint8_transport_normalised_equals_fp32_views(strong_aug):
    cfg = _cfg(strong_aug=strong_aug)
    f32, u8 = build_transforms(cfg, MEAN, STD), build_transforms(cfg, MEAN, STD, uint8=True)
    assert u8.uint8 and not f32.uint8 and (u8.mean, u8.std) == (MEAN, STD)
    for k, img in enumerate(_images(10, (12, 12))):
        for a, b in ((f32.weak, u8.weak), (f32.strong, u8.strong)):
            x8 = seeded(b, img, k)
            assert x8.dtype == torch.uint8
            x = normalize_uint8(x8, MEAN, STD)
            ref = seeded(a, img, k)
            assert (x - ref).abs().max() <= 1e-6 and torch.equal(x, ref)  # the same float ops: identical on CPU


def _view(seed=0, n=30):
    targets = np.arange(n) % 3
    return SplitView(labeled=np.arange(6), unlabeled=np.arange(n), targets=targets, ood=np.zeros(n, dtype=bool),
                     batch_size=4, unlabeled_batch=8, seed=seed)


def test_uint8_batches_equal_fp32_batches_and_resume_mid_run():
    imgs, cfg = _images(30, (12, 12)), _cfg()
    f32 = ImageBatches(imgs, _view(), build_transforms(cfg, MEAN, STD), 0, 6)
    u8 = ImageBatches(imgs, _view(), build_transforms(cfg, MEAN, STD, uint8=True), 0, 6)
    resumed = ImageBatches(imgs, _view(), build_transforms(cfg, MEAN, STD, uint8=True), 3, 6)  # resumed at step 3
    for step in range(6):
        a, b = f32[step], u8[step]
        assert b.x.dtype == torch.uint8 and b.u_strong2.dtype == torch.uint8
        assert a.normalized(None, None) is a  # float views need no normalisation
        n = b.normalized(MEAN, STD)
        for name in ("x", "y", "u_weak", "u_strong1", "u_strong2", "u_index", "u_true", "u_ood"):
            assert torch.equal(getattr(a, name), getattr(n, name)), (step, name)
        if step >= 3:
            c = resumed[step - 3]
            assert all(torch.equal(getattr(b, k), getattr(c, k)) for k in ("x", "u_weak", "u_strong1", "u_index"))
    with pytest.raises(ValueError, match="mean and std"):
        u8[0].normalized(None, None)


def test_batch_pin_memory_pins_every_tensor(monkeypatch):
    b = Batch(x=torch.zeros(2, 3, dtype=torch.uint8), y=torch.ones(2, dtype=torch.long), u_index=torch.arange(2))
    if not torch.cuda.is_available():  # no pinnable memory here: check that every tensor goes through pin_memory
        pinned = []
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self) or self.clone())
    p = b.pin_memory()
    assert isinstance(p, Batch) and p.u_weak is None
    assert torch.equal(p.x, b.x) and torch.equal(p.y, b.y) and torch.equal(p.u_index, b.u_index)
    if torch.cuda.is_available():
        assert p.x.is_pinned() and p.y.is_pinned()
        q = p.to("cuda", non_blocking=True).normalized(MEAN, STD)
        assert q.x.device.type == "cuda" and q.x.dtype == torch.float32
    else:
        assert len(pinned) == 3


def test_uint8_transport_trains_exactly_as_fp32(tiny_clip_configs, tmp_path):
    import open_clip

    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer
    from test_image_mode import TINY

    torch.manual_seed(0)
    name = tiny_clip_configs[0]
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), tmp_path / "w.pt")
    sets = [s for s in TINY if not s.startswith("run.epochs")] + [
        f"model.backbone={name}", f"model.pretrained={tmp_path / 'w.pt'}", "run.feature_cache=false",
        "algorithm.name=finessl", "run.epochs=1"]
    weights = {}
    for transport in ("uint8", "float32"):
        trainer = Trainer(resolve("embedded", sets=sets + [f"data.transport={transport}"]), None, progress=False)
        trainer.fit()
        weights[transport] = trainer.exp.model.trainable_state_dict()
        assert any(not torch.equal(v, trainer.exp.initial_state[k]) for k, v in weights[transport].items())
        batch = next(iter(trainer.exp.batches(0, 1)))
        assert batch.x.dtype == (torch.uint8 if transport == "uint8" else torch.float32)
    assert weights["uint8"].keys() == weights["float32"].keys()
    assert all(torch.equal(weights["uint8"][k], weights["float32"][k]) for k in weights["uint8"])


# -- batch-level views (data/fastviews.py) and the NumPy lookup tables of RandAugmentMC ----------------------------

def _slow(t):
    """A copy of ``t`` whose weak / strong views are new objects: ImageBatches makes them image by image."""
    from dataclasses import replace
    return replace(t, weak=T.Compose(list(t.weak.transforms)), strong=T.Compose(list(t.strong.transforms)))


@pytest.mark.parametrize("kw", [dict(), dict(hflip=False), dict(crop_padding=0), dict(resize=8, crop_padding=7),
                                dict(image_size=6, resize=9, crop_padding=3, randaugment_ops=4),
                                dict(strong_aug="randaugment")])
@pytest.mark.parametrize("uint8", [True, False])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_batch_views_equal_per_image_views(kw, uint8, mode):
    if mode == "L" and not uint8:
        pytest.skip("a 3-channel Normalize of a 1-channel view raises either way")
    imgs = _images(30, (12, 10), mode, seed=4) + _images(2, (9, 13), mode, seed=5)  # two other aspect ratios
    t = build_transforms(_cfg(**kw), MEAN, STD, uint8=uint8)
    fast, slow = ImageBatches(imgs, _view(n=32), t, 0, 8), ImageBatches(imgs, _view(n=32), _slow(t), 0, 8)
    assert t.batch_maker(t.weak) is not None and _slow(t).batch_maker(_slow(t).weak) is None
    assert (t.batch_maker(t.strong) is None) == (kw.get("strong_aug") == "randaugment")
    for step in range(8):
        a, b = fast[step], slow[step]
        for name in ("x", "u_weak", "u_strong1", "u_strong2"):
            assert getattr(a, name).dtype == getattr(b, name).dtype
            assert torch.equal(getattr(a, name), getattr(b, name)), (step, name)
    assert len(fast._padded._store) == 32  # every image resized once, then read from the cache


def test_batch_views_fall_back_per_image_for_other_modes_and_keep_the_cache_bounded():
    from finessl_lab.data.fastviews import PaddedImages
    imgs = [im.convert("RGBA") for im in _images(32, (12, 12))]  # RGBA: not made a batch at a time
    t = build_transforms(_cfg(randaugment_ops=0), MEAN, STD, uint8=True)  # (PIL's posterize etc. refuse RGBA)
    a, b = ImageBatches(imgs, _view(n=32), t, 0, 2)[1], ImageBatches(imgs, _view(n=32), _slow(t), 0, 2)[1]
    assert a.u_strong1.shape[1] == 4 and torch.equal(a.u_strong1, b.u_strong1) and torch.equal(a.x, b.x)
    cache = PaddedImages(_images(5, (12, 12)), T.Resize(10), 2, max_bytes=2 * 14 * 14 * 3)
    assert all(np.array_equal(cache[i], np.pad(np.asarray(T.Resize(10)(cache.images[i])), ((2, 2), (2, 2), (0, 0)),
                                               "reflect")) for i in range(5))
    assert len(cache._store) == 2 and cache._bytes == 2 * 14 * 14 * 3
    import pickle
    assert pickle.loads(pickle.dumps(cache))._store == {}


def _photos(n, size=20, seed=0):
    """Random images of varied contrast: full range, narrow range, two levels, constant, one dark channel."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        lo = int(rng.integers(0, 200))
        hi = lo + int(rng.integers(0, 256 - lo)) if k % 5 else lo + 1
        a = rng.integers(lo, hi + 1, (size, size, 3)).astype(np.uint8)
        if k % 7 == 3:
            a[..., 1] = lo
        out.append(Image.fromarray(a))
    return out


@pytest.mark.parametrize("name, op", [("AutoContrast", "autocontrast"), ("Equalize", "equalize")])
def test_numpy_lut_ops_equal_torchvision(name, op):
    from torchvision.transforms import functional as TF
    from finessl_lab.data import randaugment_mc as ramc
    for img in _photos(60) + [im.convert("L") for im in _photos(20, seed=1)] + [Image.new("RGB", (5, 5), 9)]:
        assert np.array_equal(np.asarray(ramc.OPS[name](img, 5)), np.asarray(getattr(TF, op)(img)))


def test_cached_lut_ops_equal_torchvision():
    from torchvision.transforms import functional as TF
    from finessl_lab.data import randaugment_mc as ramc
    for img in _photos(10) + [im.convert("L") for im in _photos(4)]:
        for v in range(1, 10):
            assert np.array_equal(np.asarray(ramc.OPS["Posterize"](img, v)),
                                  np.asarray(TF.posterize(img, int(v * 4 / 10) + 4)))
            assert np.array_equal(np.asarray(ramc.OPS["Solarize"](img, v)),
                                  np.asarray(TF.solarize(img, 256 - int(v * 256 / 10))))


@pytest.mark.parametrize("test_view", ["resize", "center_crop"])
def test_image_views_batches_equal_per_image_views_across_parts(test_view):
    """ImageViews.__getitems__ (batch-level views, what a DataLoader with a batch size calls) and ConcatViews
    (the cache build's one loader over every view) give the tensors of the per-image path, batch boundaries
    anywhere."""
    from finessl_lab.data.features import ConcatViews, ImageViews
    tr, te = _images(13, (12, 10), seed=6), _images(5, (10, 12), seed=7)
    t = build_transforms(_cfg(test_view=test_view), MEAN, STD)
    padded = t.fast.cache(tr)
    parts = [ImageViews(tr, t.test, None, 0), ImageViews(te, t.test, None, 0), ImageViews(tr, t.weak, 100, 3, padded),
             ImageViews(tr, t.strong, 200, 3, padded), ImageViews(tr, t.strong, 201, 3, padded)]
    slow = torch.utils.data.ConcatDataset([ImageViews(v.images, T.Compose(list(v.transform.transforms)), v.stream,
                                                      v.seed) for v in parts])
    want = torch.stack([slow[i] for i in range(len(slow))])
    fast = ConcatViews(parts)
    for batch in (7, 13, 64):
        got = torch.cat(list(torch.utils.data.DataLoader(fast, batch_size=batch)))
        assert got.dtype == torch.float32 and torch.equal(got, want), batch
    assert len(padded._store) == 13  # the weak and strong views of the train images share one resize each
