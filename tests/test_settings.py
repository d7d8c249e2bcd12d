"""Long-tailed and open-set settings: split counts, OOD flags reaching the batches, evaluation subsets."""
import numpy as np
import pytest

from finessl_lab.config import DataConfig
from finessl_lab.data.settings import class_groups, eval_subsets, longtail_plan, make_setting_split, model_classes
from finessl_lab.errors import UserError

K = 10
TARGETS = np.repeat(np.arange(K), 400)  # 400 images per class, like mnist5k's training set


def lt(**kw) -> DataConfig:
    d = DataConfig(dataset="mnist5k", setting="longtail", labels_per_class=40, imbalance_labeled=10.0)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def counts(idx: np.ndarray) -> list[int]:
    return np.bincount(TARGETS[idx], minlength=K).tolist()


def test_longtail_consistent_counts_follow_the_formula():
    split = make_setting_split(lt(unlabeled_per_class=300), TARGETS, K, seed=1)
    # N_k = floor(40 * 10^(-k/9)): hand-computed
    assert counts(split.labeled) == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    # unlabeled = labeled + M_k further, M_k = floor(300 * 10^(-k/9))
    assert counts(split.unlabeled) == [a + b for a, b in zip([40, 30, 23, 18, 14, 11, 8, 6, 5, 4],
                                                               [300, 232, 179, 139, 107, 83, 64, 50, 38, 30])]
    assert np.isin(split.labeled, split.unlabeled).all()


def test_longtail_uniform_and_reversed_unlabeled():
    uni = make_setting_split(lt(unlabeled_distribution="uniform", include_labeled_in_unlabeled=False), TARGETS, K, 1)
    # automatic M_1: the largest every class can supply = 400 - 40 (class 0 gives 40 labeled)
    assert counts(uni.unlabeled) == [360] * K
    rev = make_setting_split(lt(unlabeled_distribution="reversed", unlabeled_per_class=300,
                                include_labeled_in_unlabeled=False), TARGETS, K, 1)
    assert counts(rev.unlabeled) == [30, 38, 50, 64, 83, 107, 139, 179, 232, 300]
    assert counts(rev.labeled) == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    assert not np.isin(rev.labeled, rev.unlabeled).any()


def test_longtail_separate_unlabeled_ratio_and_errors():
    plan = longtail_plan(lt(imbalance_unlabeled=2.0, unlabeled_per_class=100), TARGETS, K)
    assert plan[1][0] == 100 and plan[1][-1] == 50
    with pytest.raises(UserError, match="unlabeled_per_class=1000"):
        make_setting_split(lt(unlabeled_per_class=1000), TARGETS, K, 1)
    with pytest.raises(UserError, match="labels_per_class=500"):
        make_setting_split(lt(labels_per_class=500), TARGETS, K, 1)


def test_openset_split_flags_unseen_classes():
    d = DataConfig(dataset="mnist5k", setting="openset", seen_classes=5, labels_per_class=4)
    split = make_setting_split(d, TARGETS, K, seed=2)
    assert counts(split.labeled) == [4] * 5 + [0] * 5
    assert counts(split.unlabeled) == [400] * K  # every image is unlabeled (labeled ones included, official)
    assert split.ood.tolist() == (TARGETS >= 5).tolist()
    assert model_classes(d, K) == 5
    test_t = np.repeat(np.arange(K), 3)
    assert eval_subsets(d, test_t, K)["test"].tolist() == list(range(15))
    d.seen_classes = 10
    with pytest.raises(UserError, match="seen_classes=10"):
        make_setting_split(d, TARGETS, K, seed=2)


def test_longtail_eval_groups():
    assert [g.tolist() for g in class_groups(10).values()] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    sub = eval_subsets(lt(), np.array([0, 5, 9, 3]), K)
    assert {k: v.tolist() for k, v in sub.items()} == {"test": [0, 1, 2, 3], "test_head": [0, 3],
                                                       "test_medium": [1], "test_tail": [2]}


def test_openset_ood_flags_reach_step_records(tmp_path):
    """End to end on the embedded profile: is_ood in every StepRecord matches the true class >= seen."""
    from finessl_lab.hooks import Hook
    from finessl_lab.presets import resolve
    from finessl_lab.trainer import Trainer

    cfg = resolve("embedded", sets=["data.subsample_per_class=20", "data.setting=openset", "data.seen_classes=5", "run.max_steps=3",
                                    "run.progress=false", "optim.mu=2"])
    seen = []

    class Spy(Hook):
        def on_step(self, r):
            seen.append((r.is_ood.cpu().numpy(), r.y_true.cpu().numpy()))

    trainer = Trainer(cfg, tmp_path / "run", hooks=[Spy()])
    summary = trainer.fit()
    assert len(seen) == 3 and all(len(o) == 64 for o, _ in seen)
    assert all((o == (y >= 5)).all() for o, y in seen)
    assert trainer.exp.num_classes == 5 and trainer.exp.model.main.num_classes == 5
    assert len(trainer.exp.eval_sets["test"].targets) == 500 and summary["test_top1"] is not None


def _write_idx(path, arr):
    import struct

    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 + arr.ndim
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in arr.shape) + arr.tobytes())


def test_fashion_mnist_reads_torchvision_layout(tmp_path):
    """Tiny IDX files in torchvision's layout under data.root, read through torchvision's FashionMNIST."""
    from finessl_lab.data.datasets import load_dataset

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    b = load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path), download=False), tmp_path / "cache")
    assert (len(b.train), len(b.test), b.num_classes) == (6, 4, 10)
    assert b.train.targets.tolist() == [0, 1, 2, 3, 4, 5] and b.train.images[0].mode == "RGB"
    assert b.classes[0] == "t-shirt or top"
    with pytest.raises(UserError, match="fashion_mnist not found"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "nowhere"), download=False), tmp_path)


def test_fashion_mnist_debian_package(tmp_path):
    """The 70,000 images of Debian's dataset-fashion-mnist (scripts/setup.sh installs it when root)."""
    import os

    from finessl_lab.data.datasets import FASHION_MNIST_DEBIAN, load_dataset

    if not FASHION_MNIST_DEBIAN.is_dir() and os.environ.get("FINESSL_LAB_REQUIRE_FASHION_MNIST") != "1":
        pytest.skip("dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    b = load_dataset(DataConfig(dataset="fashion_mnist"), tmp_path)
    assert (len(b.train), len(b.test)) == (60000, 10000)
    assert np.bincount(b.train.targets).tolist() == [6000] * 10


def test_every_preset_validates_and_is_listed(capsys):
    from finessl_lab.cli import main
    from finessl_lab.presets import PRESETS, resolve

    for name in PRESETS:
        resolve(name)
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)
    assert {"embedded_lt_rho10", "embedded_openset", "fig4_cifar100_openset_n5", "table9_cifar100_lt_rho20_reversed",
            "table4_cifar100_n4_lora", "table10_cifar100_n4_lp_ft"} <= set(PRESETS)
