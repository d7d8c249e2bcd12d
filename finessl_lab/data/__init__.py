"""Datasets (lazy RGB images + int64 targets), seeded SSL splits with an on-disk cache, and augmented views."""
from .datasets import (
    DATASET_NAMES,
    NORMALIZATION,
    DatasetBundle,
    ImageDataset,
    first_per_class,
    load_dataset,
    resolve_normalization,
)
from .splits import (
    Split,
    cached_split,
    longtail_counts,
    make_longtail_split,
    make_openset_split,
    make_split,
    split_by_counts,
)
from .transforms import Cutout, ViewTransforms, build_transforms, seeded, view_seed

__all__ = [
    "DATASET_NAMES", "NORMALIZATION", "DatasetBundle", "ImageDataset", "first_per_class", "load_dataset",
    "resolve_normalization", "Split", "cached_split", "longtail_counts", "make_longtail_split",
    "make_openset_split", "make_split", "split_by_counts", "Cutout", "ViewTransforms", "build_transforms",
    "seeded", "view_seed",
]
