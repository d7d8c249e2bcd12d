"""Tests of finessl_lab.data: splits, split cache, datasets (mnist5k, torchvision error paths, folders), views."""
from __future__ import annotations

import csv
import gzip
import json
import random
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from finessl_lab.data import (
    NORMALIZATION,
    Cutout,
    DatasetBundle,
    ImageDataset,
    Split,
    build_transforms,
    cached_split,
    load_dataset,
    make_longtail_split,
    make_openset_split,
    make_split,
    resolve_normalization,
    seeded,
    view_seed,
)
from finessl_lab.data import splits as splits_mod
from finessl_lab.data.datasets import mnist5k_path
from finessl_lab.errors import UserError


def data_cfg(**kw):
    base = dict(dataset="mnist5k", root="", download=False, subsample_per_class=0, image_size=28, resize=32,
                crop_padding=4, hflip=True, randaugment_ops=2, randaugment_magnitude=10, cutout=0.5,
                strong_aug="randaugment", test_view="center_crop")  # the clean forms; official: test_fidelity.py
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset(data_cfg(), Path("/nonexistent-cache"))


@pytest.fixture(scope="module")
def raw_mnist():
    with gzip.open(mnist5k_path(), "rt") as f:
        return [list(map(int, row)) for row in csv.reader(f)]


def balanced_targets(num_classes=5, per_class=20, seed=0):
    t = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(t)


# -- make_split ---------------------------------------------------------------------------------------------

def test_split_counts_disjoint_and_sorted():
    t = balanced_targets(5, 20)
    s = make_split(t, 5, 3, val_per_class=2, include_labeled_in_unlabeled=False, seed=1)
    assert np.bincount(t[s.labeled], minlength=5).tolist() == [3] * 5
    assert np.bincount(t[s.val], minlength=5).tolist() == [2] * 5
    assert np.bincount(t[s.unlabeled], minlength=5).tolist() == [15] * 5
    assert not set(s.labeled) & set(s.unlabeled) and not set(s.labeled) & set(s.val) and not set(s.val) & set(s.unlabeled)
    assert sorted(set(s.labeled) | set(s.unlabeled) | set(s.val)) == list(range(len(t)))
    for a in (s.labeled, s.unlabeled, s.val):
        assert a.dtype == np.int64 and np.all(np.diff(a) > 0)


def test_split_includes_labeled_in_unlabeled_by_default():
    t = balanced_targets(4, 10)
    s = make_split(t, 4, 2, val_per_class=3, seed=0)
    assert set(s.labeled) <= set(s.unlabeled)
    assert not set(s.val) & set(s.unlabeled)
    assert len(s.unlabeled) == len(t) - len(s.val) == 28


def test_split_deterministic_for_seed_and_differs_across_seeds():
    t = balanced_targets(10, 50)
    a, b = make_split(t, 10, 4, val_per_class=5, seed=3), make_split(t, 10, 4, val_per_class=5, seed=3)
    for k in ("labeled", "unlabeled", "val"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    c = make_split(t, 10, 4, val_per_class=5, seed=4)
    assert not np.array_equal(a.labeled, c.labeled)


def test_labeled_sets_nested_in_n_and_val_independent_of_n():
    t = balanced_targets(6, 30)
    s1, s2, s4 = (make_split(t, 6, n, val_per_class=4, seed=7) for n in (1, 2, 4))
    assert set(s1.labeled) < set(s2.labeled) < set(s4.labeled)
    assert np.array_equal(s1.val, s4.val)


def test_split_too_large_n_names_class_and_maximum():
    t = np.array([0] * 10 + [1] * 5 + [2] * 10)
    with pytest.raises(UserError, match=r"class 1 has 5 .*maximum valid labels_per_class for it is 5"):
        make_split(t, 3, 6)
    with pytest.raises(UserError, match=r"class 1 has 5 .*maximum valid labels_per_class for it is 3"):
        make_split(t, 3, 4, val_per_class=2)
    with pytest.raises(UserError, match="class 2 has 0"):
        make_split(np.array([0, 0, 1, 1]), 3, 1)


@pytest.mark.parametrize("n", [0, -1])
def test_split_rejects_non_positive_n(n):
    with pytest.raises(UserError, match="labels_per_class"):
        make_split(balanced_targets(), 5, n)


def test_split_rejects_bad_targets():
    with pytest.raises(UserError, match="targets must lie"):
        make_split(np.array([0, 1, 5]), 3, 1)
    with pytest.raises(UserError, match="1-D"):
        make_split(np.zeros((2, 2), dtype=int), 3, 1)


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), n=st.integers(1, 12), v=st.integers(0, 4),
       include=st.booleans(), seed=st.integers(0, 2**31 - 1), order_seed=st.integers(0, 1000))
def test_split_properties(counts, n, v, include, seed, order_seed):
    t = np.random.default_rng(order_seed).permutation(np.repeat(np.arange(len(counts)), counts))
    k = len(counts)
    if any(n + v > c for c in counts):
        with pytest.raises(UserError, match="maximum valid"):
            make_split(t, k, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
        return
    s = make_split(t, k, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
    assert np.bincount(t[s.labeled], minlength=k).tolist() == [n] * k
    assert np.bincount(t[s.val], minlength=k).tolist() == [v] * k
    assert not set(s.val) & (set(s.labeled) | set(s.unlabeled))
    lab, unl = set(s.labeled.tolist()), set(s.unlabeled.tolist())
    assert (lab <= unl) if include else not (lab & unl)
    assert lab | unl | set(s.val.tolist()) == set(range(len(t)))
    again = make_split(t, k, n, val_per_class=v, include_labeled_in_unlabeled=include, seed=seed)
    assert all(np.array_equal(getattr(s, f), getattr(again, f)) for f in ("labeled", "unlabeled", "val"))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_split_class_independent_of_other_classes(k, seed):
    """A class's labeled images do not change when another class is added."""
    t = np.repeat(np.arange(k), 8)
    t_more = np.concatenate([t, np.full(8, k)])
    a = make_split(t, k, 3, seed=seed)
    b = make_split(t_more, k + 1, 3, seed=seed)
    assert np.array_equal(a.labeled, b.labeled[b.labeled < len(t)])


# -- long-tail / open-set --------------------------------------------------------------------------------

def test_longtail_split_counts():
    t = np.repeat(np.arange(10), 200)
    s = make_longtail_split(t, 10, 50, 100, imbalance_ratio=10, include_labeled_in_unlabeled=False, seed=0)
    nl, nu = np.bincount(t[s.labeled], minlength=10), np.bincount(t[s.unlabeled], minlength=10)
    assert nl[0] == 50 and nl[-1] == 5 and np.all(np.diff(nl) <= 0)
    assert nu[0] == 100 and nu[-1] == 10
    assert not set(s.labeled) & set(s.unlabeled)


def test_openset_split_flags_unseen_classes():
    t = np.repeat(np.arange(6), 10)
    s = make_openset_split(t, 6, 2, seen_classes=[0, 1, 2], seed=0)
    assert set(t[s.labeled]) == {0, 1, 2}
    assert np.array_equal(s.ood, t >= 3) and s.ood.dtype == bool
    assert s.ood[s.unlabeled].sum() == 30 and not s.ood[s.labeled].any()
    assert make_split(t, 6, 2).ood is None


# -- cached_split ---------------------------------------------------------------------------------------

def test_cached_split_writes_once_and_reloads(tmp_path, monkeypatch):
    t = balanced_targets(5, 20)
    first = cached_split(tmp_path, "toy-100", t, 5, 2, val_per_class=1, seed=5)
    files = list((tmp_path / "splits").glob("toy-100-*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    payload = json.loads(files[0].read_text())
    assert payload["params"]["labels_per_class"] == 2 and payload["params"]["seed"] == 5

    def boom(*a, **k):
        raise AssertionError("recomputed instead of loading the cache")

    monkeypatch.setattr(splits_mod, "make_split", boom)
    second = cached_split(tmp_path, "toy-100", t, 5, 2, val_per_class=1, seed=5)
    for k in ("labeled", "unlabeled", "val"):
        assert np.array_equal(getattr(first, k), getattr(second, k))
        assert getattr(second, k).dtype == np.int64
    assert files[0].stat().st_mtime_ns == stamp
    direct = make_split(t, 5, 2, val_per_class=1, seed=5)
    assert np.array_equal(direct.labeled, first.labeled)


def test_cached_split_recomputes_when_params_or_targets_change(tmp_path):
    t = balanced_targets(5, 20)
    a = cached_split(tmp_path, "toy", t, 5, 2, seed=0)
    b = cached_split(tmp_path, "toy", t, 5, 2, seed=1)
    c = cached_split(tmp_path, "toy", t, 5, 3, seed=0)
    assert len(list((tmp_path / "splits").glob("*.json"))) == 3
    assert not np.array_equal(a.labeled, b.labeled) and len(c.labeled) == 15
    # same params, different targets (dataset changed under the same key): recompute and overwrite
    t2 = balanced_targets(5, 20, seed=99)
    d = cached_split(tmp_path, "toy", t2, 5, 2, seed=0)
    assert np.array_equal(d.labeled, make_split(t2, 5, 2, seed=0).labeled)
    assert len(list((tmp_path / "splits").glob("*.json"))) == 3


def test_cached_split_survives_corrupt_file(tmp_path):
    t = balanced_targets(5, 20)
    a = cached_split(tmp_path, "toy", t, 5, 2)
    (path,) = (tmp_path / "splits").glob("*.json")
    path.write_text("{not json")
    b = cached_split(tmp_path, "toy", t, 5, 2)
    assert np.array_equal(a.labeled, b.labeled)
    assert json.loads(path.read_text())["params"]["dataset_key"] == "toy"


def test_cached_split_rejects_out_of_range_indices(tmp_path):
    t = balanced_targets(5, 20)
    a = cached_split(tmp_path, "toy", t, 5, 2)
    (path,) = (tmp_path / "splits").glob("*.json")
    payload = json.loads(path.read_text())
    payload["split"]["labeled"][0] = 10_000  # params and fingerprint still match
    path.write_text(json.dumps(payload))
    b = cached_split(tmp_path, "toy", t, 5, 2)
    assert np.array_equal(a.labeled, b.labeled)


def test_cached_split_refuses_package_directory():
    package = Path(splits_mod.__file__).resolve().parents[1]
    with pytest.raises(UserError, match="inside the installed package"):
        cached_split(package / "cache", "toy", balanced_targets(), 5, 1)


def test_split_dict_roundtrip():
    s = Split(np.array([1, 2]), np.array([3]), np.array([], dtype=np.int64), ood=np.array([False, True]))
    r = Split.from_dict(json.loads(json.dumps(s.to_dict())))
    assert r.labeled.tolist() == [1, 2] and r.val.dtype == np.int64 and r.ood.tolist() == [False, True]


# -- mnist5k ----------------------------------------------------------------------------------------------

def test_mnist5k_sizes_and_classes(mnist):
    assert (len(mnist.train), len(mnist.test), mnist.num_classes) == (4000, 1000, 10)
    assert mnist.classes[0] == "zero" and mnist.classes[9] == "nine"
    assert np.bincount(mnist.train.targets).tolist() == [400] * 10
    assert np.bincount(mnist.test.targets).tolist() == [100] * 10
    assert mnist.train.targets.dtype == np.int64
    img = mnist.train.images[123]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)


@pytest.mark.parametrize("split,i,row", [("train", 0, 0), ("train", 400, 500), ("train", 3999, 4899),
                                         ("test", 0, 400), ("test", 150, 950), ("test", 999, 4999)])
def test_mnist5k_matches_raw_csv(mnist, raw_mnist, split, i, row):
    """The file is sorted by class, 500 per class: train = rows 0-399 of each block, test = rows 400-499."""
    ds = getattr(mnist, split)
    assert len(raw_mnist[row]) == 785
    assert ds.targets[i] == raw_mnist[row][-1] == row // 500
    pixels = np.asarray(ds.images[i])
    assert np.array_equal(pixels[..., 0], np.array(raw_mnist[row][:784]).reshape(28, 28))
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_mnist5k_key_and_subsample(mnist):
    assert mnist.key.startswith("mnist5k-4000-1000-")
    assert load_dataset(data_cfg(), Path("/elsewhere")).key == mnist.key
    sub = load_dataset(data_cfg(subsample_per_class=3), Path("/x"))
    assert len(sub.train) == 30 and len(sub.test) == 1000 and sub.key != mnist.key
    assert np.bincount(sub.train.targets).tolist() == [3] * 10
    assert np.array_equal(np.asarray(sub.train.images[3]), np.asarray(mnist.train.images[400]))


def test_unknown_dataset_suggests():
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        load_dataset(data_cfg(dataset="cifar1O"), Path("/x"))


def test_image_dataset_subset_and_length_check(mnist):
    sub = mnist.test.subset([5, 2])
    assert len(sub) == 2 and sub.targets.tolist() == mnist.test.targets[[5, 2]].tolist()
    assert np.array_equal(np.asarray(sub.images[1]), np.asarray(mnist.test.images[2]))
    with pytest.raises(ValueError, match="targets"):
        ImageDataset(images=[1, 2], targets=np.array([0]))


# -- torchvision datasets: error path only (no network in tests) ----------------------------------------

@pytest.mark.parametrize("name,url", [("cifar10", "https://www.cs.toronto.edu/~kriz/cifar.html"),
                                      ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar.html"),
                                      ("food101", "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/")])
def test_torchvision_missing_without_download_is_user_error(tmp_path, name, url):
    with pytest.raises(UserError) as info:
        load_dataset(data_cfg(dataset=name, root=str(tmp_path), download=False), tmp_path / "cache")
    msg = str(info.value)
    assert url in msg and str(tmp_path) in msg and "data.root" in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_torchvision_default_root_is_under_cache(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "cache" / "datasets")):
        load_dataset(data_cfg(dataset="cifar10", download=False), tmp_path / "cache")


# -- folder datasets --------------------------------------------------------------------------------------

def make_tree(root: Path, splits=("train", "test"), classes=("cat", "dog", "sea_lion"), per_class=2, ext="png"):
    for s in splits:
        for ci, c in enumerate(classes):
            d = root / s / c
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                mode = "L" if j % 2 else "RGB"
                Image.new(mode, (5 + ci, 4), color=40 * ci + j if mode == "L" else (40 * ci, j, 0)).save(d / f"{j}.{ext}")
    return root


def test_imagefolder_loads(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    b = load_dataset(data_cfg(dataset="imagefolder", root=str(root)), tmp_path)
    assert isinstance(b, DatasetBundle)
    assert b.classes == ["cat", "dog", "sea_lion"] and b.num_classes == 3
    assert (len(b.train), len(b.test)) == (6, 6)
    assert b.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    img = b.train.images[5]
    assert img.mode == "RGB" and img.size == (7, 4)
    assert np.asarray(b.train.images[2])[0, 0].tolist() == [40, 0, 0]
    # the key does not depend on where the data lives
    other = shutil.copytree(root, tmp_path / "moved")
    assert load_dataset(data_cfg(dataset="imagefolder", root=str(other)), tmp_path).key == b.key


def test_datasets_pickle_for_dataloader_workers(tmp_path, mnist):
    import pickle

    b = load_dataset(data_cfg(dataset="imagefolder", root=str(make_tree(tmp_path / "p"))), tmp_path)
    for ds in (b.train.subset([1, 3]), mnist.test.subset([0])):
        clone = pickle.loads(pickle.dumps(ds))
        assert np.array_equal(np.asarray(clone.images[0]), np.asarray(ds.images[0]))


def test_imagenet_val_split_and_classnames(tmp_path):
    root = make_tree(tmp_path / "in", splits=("train", "val"), classes=("n01", "n02"), ext="JPEG")
    (root / "classnames.txt").write_text("tench\ngoldfish\n")
    b = load_dataset(data_cfg(dataset="imagenet", root=str(root)), tmp_path)
    assert b.classes == ["tench", "goldfish"] and len(b.test) == 4
    (root / "classnames.txt").write_text("tench\n")
    with pytest.raises(UserError, match="1 names but train/ has 2"):
        load_dataset(data_cfg(dataset="imagenet", root=str(root)), tmp_path)


def test_folder_subsample_keeps_first_k(tmp_path):
    root = make_tree(tmp_path / "d", per_class=4)
    full = load_dataset(data_cfg(dataset="semi_aves", root=str(root)), tmp_path)
    b = load_dataset(data_cfg(dataset="semi_aves", root=str(root), subsample_per_class=2), tmp_path)
    assert b.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(np.asarray(b.train.images[2]), np.asarray(full.train.images[4]))


@pytest.mark.parametrize("setup,pattern", [
    (lambda r: None, "does not exist"),
    (lambda r: r.mkdir(), "contains nothing; expected root/train/<class>"),
    (lambda r: (r / "cat").mkdir(parents=True), "contains cat; expected root/train/<class>"),
    (lambda r: make_tree(r, splits=("train",)), "contains train; expected"),
    (lambda r: (make_tree(r, splits=("test",)), (r / "train").mkdir()), "no class sub-folders"),
    (lambda r: (make_tree(r), (r / "train" / "empty").mkdir()), r"empty holds no images"),
    (lambda r: (make_tree(r), (r / "test" / "cow").mkdir()), "not in train/: cow"),
])
def test_folder_wrong_layout_is_user_error(tmp_path, setup, pattern):
    root = tmp_path / "ds"
    setup(root)
    with pytest.raises(UserError, match=pattern) as info:
        load_dataset(data_cfg(dataset="imagefolder", root=str(root)), tmp_path)
    assert str(root) in str(info.value)


# -- normalisation ----------------------------------------------------------------------------------------

def test_normalization_table():
    assert set(NORMALIZATION) >= {"clip", "cifar", "imagenet", "inception"}
    assert NORMALIZATION["inception"] == ((0.5,) * 3, (0.5,) * 3)
    assert NORMALIZATION["clip"][0][0] == pytest.approx(0.48145466)
    assert resolve_normalization("cifar", "cifar10") == NORMALIZATION["cifar10"] != NORMALIZATION["cifar100"]
    assert resolve_normalization("cifar", "cifar100") == NORMALIZATION["cifar"]
    with pytest.raises(UserError, match="unknown normalization"):
        resolve_normalization("clipp")


# -- transforms -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def views():
    return build_transforms(data_cfg(), *NORMALIZATION["clip"])


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB")


def test_view_shapes_and_dtype(views, photo, mnist):
    for t in (views.weak, views.strong, views.test):
        for img in (photo, mnist.train.images[0]):
            x = t(img)
            assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_test_view_is_deterministic_and_normalised(views, photo):
    a, b = views.test(photo), views.test(photo)
    assert torch.equal(a, b)
    white = views.test(Image.new("RGB", (32, 32), (255, 255, 255)))
    mean, std = NORMALIZATION["clip"]
    assert white[0, 0, 0].item() == pytest.approx((1 - mean[0]) / std[0], abs=1e-5)


@pytest.mark.parametrize("which", ["weak", "strong"])
def test_seeded_same_seed_same_tensor_whatever_global_rng(views, photo, which):
    t = getattr(views, which)
    torch.manual_seed(1); random.seed(1); np.random.seed(1)
    a = seeded(t, photo, 42)
    torch.manual_seed(999); random.seed(999); np.random.seed(999)
    torch.rand(17)
    b = seeded(t, photo, 42)
    assert torch.equal(a, b)
    others = [seeded(t, photo, s) for s in range(43, 48)]
    assert any(not torch.equal(a, o) for o in others)


def test_seeded_restores_global_rng(views, photo):
    torch.manual_seed(5); random.seed(5); np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5); random.seed(5); np.random.seed(5)
    seeded(views.strong, photo, 123)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


def test_seeded_controls_python_random_too(photo):
    a = seeded(lambda img: random.random(), photo, 7)
    assert a == seeded(lambda img: random.random(), photo, 7) != seeded(lambda img: random.random(), photo, 8)


def test_strong_without_extra_ops_equals_weak(photo):
    v = build_transforms(data_cfg(randaugment_ops=0, cutout=0.0), *NORMALIZATION["imagenet"])
    for s in range(5):
        assert torch.equal(seeded(v.weak, photo, s), seeded(v.strong, photo, s))
    v2 = build_transforms(data_cfg(), *NORMALIZATION["imagenet"])
    assert any(not torch.equal(seeded(v2.weak, photo, s), seeded(v2.strong, photo, s)) for s in range(5))


def test_no_hflip_no_padding_weak_is_a_crop(photo):
    v = build_transforms(data_cfg(hflip=False, crop_padding=0, resize=28, image_size=28), (0, 0, 0), (1, 1, 1))
    sq = photo.resize((28, 28))
    assert torch.equal(seeded(v.weak, sq, 0), seeded(v.weak, sq, 1))


def test_resize_smaller_than_crop_is_user_error():
    with pytest.raises(UserError, match="data.resize=16 must be >= data.image_size=28"):
        build_transforms(data_cfg(resize=16), *NORMALIZATION["clip"])


def test_cutout_paints_bounded_grey_square():
    img = Image.new("RGB", (40, 40), (255, 255, 255))
    cut = Cutout(0.5)
    sizes = []
    for s in range(30):
        out = np.asarray(seeded(cut, img, s))
        grey = np.all(out == 127, axis=-1)
        assert np.all(out[~grey] == 255)
        ys, xs = np.nonzero(grey)
        assert grey.sum() >= 1 and (xs.max() - xs.min() + 1) <= 20 and (ys.max() - ys.min() + 1) <= 20
        sizes.append(int(grey.sum()))
    assert len(set(sizes)) > 5
    assert np.asarray(img).min() == 255  # input untouched
    assert seeded(Cutout(0.0), img, 0) is img
    with pytest.raises(UserError):
        Cutout(1.5)


def test_view_seed_stable_and_mixing():
    assert view_seed(0, 1, 2, 3) == 6392735876773827331  # fixed forever: cached views depend on it
    assert 0 <= view_seed(1) < 2**63
    seeds = {view_seed(s, stream, i) for s in range(3) for stream in range(2) for i in range(50)}
    assert len(seeds) == 300
    assert view_seed(1, 23) != view_seed(12, 3) and view_seed(np.int64(4), 5) == view_seed(4, 5)


def test_unreadable_image_is_a_user_error_naming_the_file(tmp_path):
    root = make_tree(tmp_path / "data")
    bad = root / "train" / "dog" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    b = load_dataset(data_cfg(dataset="imagefolder", root=str(root)), tmp_path)
    with pytest.raises(UserError, match=r"image '.*dog/0.png' cannot be read"):
        b.train.images[2]
