"""Semi-Aves (FGVC7 list files) and ImageNet 1% / 10% (SimCLR subset lists) on tiny fake layouts the tests
create; fashion5k's seeded subset."""
import numpy as np
import pytest
from PIL import Image

from finessl_lab.config import DataConfig
from finessl_lab.data.datasets import fashion5k_indices, load_dataset
from finessl_lab.data.settings import make_setting_split
from finessl_lab.errors import UserError


def _img(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def make_semi_aves(root, k=3, n_lab=(3, 2, 1), n_in=4, n_out=5, n_test=2, sub=""):
    """USB / ssl-evaluation layout: list files (in root/<sub>) of 'relative/path label' lines, paths under root."""
    lists = root / sub if sub else root
    lists.mkdir(parents=True, exist_ok=True)
    lines = {"l_train_val": [], "l_train": [], "u_train_in": [], "u_train_out": [], "test": [], "u_train_in_oracle": []}
    i = 0
    for c in range(k):
        for j in range(n_lab[c]):
            rel = f"trainval_images/{c}/{j}.png"
            _img(root / rel, 10 * c + j)
            lines["l_train_val"].append(f"{rel} {c}")
            if j == 0:
                lines["l_train"].append(f"{rel} {c}")
        for j in range(n_test):
            _img(root / f"test/{c}_{j}.png", 100 + c)
            lines["test"].append(f"test/{c}_{j}.png {c}")
    for j in range(n_in):
        _img(root / f"u_train_in/{j}.png", 150 + j)
        lines["u_train_in"].append(f"u_train_in/{j}.png -1")
        lines["u_train_in_oracle"].append(f"u_train_in/{j}.png {j % k}")
    for j in range(n_out):
        _img(root / f"u_train_out/{j}.png", 200 + j)
        lines["u_train_out"].append(f"u_train_out/{j}.png -1")
    for name, ls in lines.items():
        (lists / f"{name}.txt").write_text("\n".join(ls) + "\n")
    (lists / "semi_aves_species_names.txt").write_text("\n".join(f"{c} Genus_species{c}" for c in range(k)) + "\n")
    return root


def test_semi_aves_lists_in_class(tmp_path):
    root = make_semi_aves(tmp_path / "aves")
    b = load_dataset(DataConfig(dataset="semi_aves", root=str(root)), tmp_path / "cache")
    assert b.classes == ["Genus species0", "Genus species1", "Genus species2"]
    assert (len(b.train), len(b.test)) == (6 + 4, 6)
    s = make_setting_split(DataConfig(dataset="semi_aves"), b.train.targets, b.num_classes, 0, given=b.split)
    assert s.labeled.tolist() == list(range(6)) and np.bincount(b.train.targets[s.labeled]).tolist() == [3, 2, 1]
    assert s.unlabeled.tolist() == list(range(10)) and not s.ood.any()   # official: labeled also unlabeled
    assert b.train.targets[6:].tolist() == [0, 1, 2, 0]                   # the oracle labels (analysis only)
    assert b.train.images[0].size == (8, 8)
    # l_train instead of l_train_val; labeled images left out of the unlabeled set
    b2 = load_dataset(DataConfig(dataset="semi_aves", root=str(root), label_list="l_train",
                                 include_labeled_in_unlabeled=False), tmp_path / "cache")
    assert len(b2.split.labeled) == 3 and b2.split.unlabeled.tolist() == list(range(3, 7)) and b2.key != b.key


def test_semi_aves_in_plus_out_flags_ood_and_reaches_step_records(tmp_path):
    from finessl_lab.hooks import Hook
    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer

    root = make_semi_aves(tmp_path / "aves", sub="semi_aves")  # USB keeps the lists in root/semi_aves
    b = load_dataset(DataConfig(dataset="semi_aves", root=str(root), unlabeled_out=True), tmp_path / "cache")
    assert len(b.train) == 6 + 4 + 5 and b.split.ood.tolist() == [False] * 10 + [True] * 5
    assert (b.train.targets[10:] == -1).all() and len(b.split.unlabeled) == 15

    cfg = resolve("embedded", sets=[f"data.root={root}", "data.dataset=semi_aves", "data.unlabeled_out=true",
                                    "run.max_steps=3", "run.progress=false", "optim.batch_size=4", "optim.mu=2",
                                    f"run.cache_dir={tmp_path / 'cache'}"])
    seen = []

    class Spy(Hook):
        def on_step(self, r):
            seen.append((r.is_ood.cpu().numpy(), r.y_true.cpu().numpy()))

    summary = Trainer(cfg, tmp_path / "run", hooks=[Spy()]).fit()
    assert len(seen) == 3 and all(len(o) == 8 for o, _ in seen)
    assert all((o == (y == -1)).all() for o, y in seen)   # only the out-of-class images have no label here
    assert any(o.any() for o, _ in seen) and summary["test_top1"] is not None


def test_semi_aves_missing_is_one_line_naming_where_to_get_it(tmp_path):
    for cfg in (DataConfig(dataset="semi_aves", root=str(tmp_path / "nowhere")),
                DataConfig(dataset="semi_aves", root=str(tmp_path / "nowhere"), unlabeled_out=True)):
        with pytest.raises(UserError) as e:
            load_dataset(cfg, tmp_path)
        assert "\n" not in str(e.value) and "github.com/cvl-umass/semi-inat-2020" in str(e.value)
    root = make_semi_aves(tmp_path / "aves")
    (root / "u_train_out.txt").unlink()
    with pytest.raises(UserError, match=r"u_train_out\.txt missing .*ssl-evaluation"):
        load_dataset(DataConfig(dataset="semi_aves", root=str(root), unlabeled_out=True), tmp_path)
    with pytest.raises(UserError, match="data.label_list='l_val' is not valid for semi_aves"):
        load_dataset(DataConfig(dataset="semi_aves", root=str(root), label_list="l_val"), tmp_path)
    with pytest.raises(UserError, match="data.setting=longtail is not valid for semi_aves"):
        b = load_dataset(DataConfig(dataset="semi_aves", root=str(root)), tmp_path)
        make_setting_split(DataConfig(dataset="semi_aves", setting="longtail"), b.train.targets, 3, 0, given=b.split)
    with pytest.raises(UserError, match="only valid for semi_aves"):
        load_dataset(DataConfig(dataset="mnist5k", unlabeled_out=True), tmp_path)


def make_imagenet(root, wnids=("n01440764", "n01443537"), per_class=4):
    for w in wnids:
        for j in range(per_class):
            _img(root / "train" / w / f"{w}_{j}.JPEG", j)
        _img(root / "val" / w / f"ILSVRC2012_val_{w}.JPEG", 9)
    return root


def test_imagenet_subset_list_selects_the_listed_files(tmp_path):
    root = make_imagenet(tmp_path / "imagenet")
    (root / "imagenet_subsets").mkdir()
    (root / "imagenet_subsets" / "1percent.txt").write_text("n01440764_2.JPEG\nn01443537_0.JPEG\n")
    b = load_dataset(DataConfig(dataset="imagenet", root=str(root), label_list="1percent.txt"), tmp_path / "cache")
    assert (len(b.train), len(b.test), b.num_classes) == (8, 2, 2)
    names = [p.name for p in np.asarray(b.train.images.paths)[b.split.labeled]]
    assert names == ["n01440764_2.JPEG", "n01443537_0.JPEG"] and b.train.targets[b.split.labeled].tolist() == [0, 1]
    assert len(b.split.unlabeled) == 8 and not b.split.ood.any()
    plain = load_dataset(DataConfig(dataset="imagenet", root=str(root)), tmp_path / "cache")
    assert plain.split is None and plain.key != b.key
    with pytest.raises(UserError, match="not valid with imagenet's list-defined split"):
        load_dataset(DataConfig(dataset="imagenet", root=str(root), label_list="1percent", subsample_per_class=2),
                     tmp_path)
    (root / "10percent.txt").write_text("n01440764_9.JPEG\n")
    with pytest.raises(UserError, match=r"1 of the 1 images of 10percent.txt are not under"):
        load_dataset(DataConfig(dataset="imagenet", root=str(root), label_list="10percent"), tmp_path)
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(dataset="imagenet", root=str(root), label_list="2percent"), tmp_path)
    assert "\n" not in str(e.value) and "google-research/simclr" in str(e.value)
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(dataset="imagenet", root=str(tmp_path / "none"), label_list="1percent"), tmp_path)
    assert "\n" not in str(e.value) and "image-net.org" in str(e.value)


def test_fashion5k_is_a_fixed_seeded_subset_shaped_like_mnist5k():
    rng = np.random.default_rng(3)
    train_t, test_t = np.repeat(np.arange(10), 600), rng.permutation(np.repeat(np.arange(10), 150))
    tr, te = fashion5k_indices(train_t, test_t)
    assert np.bincount(train_t[tr]).tolist() == [400] * 10 and np.bincount(test_t[te]).tolist() == [100] * 10
    tr2, te2 = fashion5k_indices(train_t, test_t)
    assert (tr == tr2).all() and (te == te2).all()          # fixed, not per run
    assert not (tr == np.sort(np.concatenate([np.flatnonzero(train_t == c)[:400] for c in range(10)]))).all()
    with pytest.raises(UserError, match="fashion5k needs 400 images of class 0"):
        fashion5k_indices(np.repeat(np.arange(10), 10), test_t)


def test_semi_aves_challenge_json_layout_of_the_official_code(tmp_path):
    """root/annotation/anno_{l_train,u_train_in,u_train_out,test}.json + solution.csv (what the authors' code reads)."""
    import json

    root = tmp_path / "Semi-Aves"
    ann = root / "annotation"
    ann.mkdir(parents=True)

    def write(name, files, labels):
        images = [{"id": i + 10, "file_name": f} for i, f in enumerate(files)]
        annos = [{"id": i, "image_id": i + 10, "category_id": y} for i, y in enumerate(labels)] if labels else []
        (ann / f"anno_{name}.json").write_text(json.dumps({"images": images, "annotations": annos}))
        for j, f in enumerate(files):
            _img(root / f, j)

    write("l_train", ["trainval_images/a.jpg", "trainval_images/b.jpg"], [0, 1])
    write("u_train_in", ["u_train_in/0.jpg", "u_train_in/1.jpg", "u_train_in/2.jpg"], [-1, -1, -1])
    write("u_train_out", ["u_train_out/0.jpg"], [-1])
    write("test", ["test/0.jpg", "test/1.jpg"], None)
    (ann / "solution.csv").write_text("Id,Category\n11,0\n10,1\n")
    (ann / "semi_aves_class_names.txt").write_text("0 Anas_platyrhynchos\n1 Pica_pica\n")
    b = load_dataset(DataConfig(dataset="semi_aves", root=str(root), label_list="l_train", unlabeled_out=True), tmp_path)
    assert b.classes == ["Anas platyrhynchos", "Pica pica"] and b.test.targets.tolist() == [1, 0]
    assert b.train.targets.tolist() == [0, 1, -1, -1, -1, -1] and b.split.ood.tolist() == [False] * 5 + [True]
    with pytest.raises(UserError, match=r"anno_val.json missing in .*annotation"):
        load_dataset(DataConfig(dataset="semi_aves", root=str(root)), tmp_path)  # l_train_val needs anno_val.json
