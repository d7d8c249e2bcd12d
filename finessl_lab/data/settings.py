"""SSL settings beyond the balanced one: long-tailed (Table 9) and open-set (Fig. 4), from ``DataConfig``.

* ``data.setting=balanced``: ``data.labels_per_class`` labeled images of every class (the cached split).
* ``data.setting=longtail``: class k gets ``N_k = N_1 * rho_l^(-k/(K-1))`` labeled images (``N_1 =
  data.labels_per_class``, ``rho_l = data.imbalance_labeled``) and ``M_k = M_1 * rho_u^(-k/(K-1))`` unlabeled ones,
  chosen independently (the official ``make_imb_data`` with ``IMB_L`` / ``IMB_U``):
  ``data.unlabeled_distribution`` = ``consistent`` (rho_u = ``data.imbalance_unlabeled``, or rho_l when that is 0),
  ``uniform`` (rho_u = 1) or ``reversed`` (the consistent counts in reverse class order: the tail is the largest).
  ``M_1 = data.unlabeled_per_class``; 0 = the largest M_1 every class can supply. Class 0 is the head class.
  Test accuracy is also reported per group of classes: head / medium / tail = the first, second and last third
  of the classes (``numpy.array_split``; 10 classes -> 4 / 3 / 3).
* a dataset with a list-defined split (Semi-Aves, ImageNet with ``data.label_list``) uses the lists' split;
  ``data.labels_per_class`` does not apply to it.
* ``data.setting=openset``: the first ``data.seen_classes`` classes are *seen* (labeled, ``labels_per_class``
  each); images of the other classes appear only in the unlabeled set, flagged out-of-distribution
  (``Split.ood`` -> ``Batch.u_ood`` -> ``StepRecord.is_ood``). The heads have ``seen_classes`` outputs and the
  test accuracy is measured on the test images of the seen classes only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .splits import Split, cached_split, longtail_counts, make_longtail_split, make_openset_split

SETTINGS = ("balanced", "longtail", "openset")
UNLABELED_DISTRIBUTIONS = ("consistent", "uniform", "reversed")
GROUPS = ("head", "medium", "tail")


def unlabeled_ratio(d: Any) -> float:
    """rho_u of the long-tailed unlabeled set (before a possible reversal)."""
    if d.unlabeled_distribution == "uniform":
        return 1.0
    return float(d.imbalance_unlabeled or d.imbalance_labeled)


def longtail_plan(d: Any, targets: np.ndarray, num_classes: int) -> tuple[list[int], list[int]]:
    """(labeled counts N_k, unlabeled counts M_k) of a long-tailed split, checked against what each class holds."""
    t = np.asarray(targets, dtype=np.int64)
    have = np.bincount(t, minlength=num_classes)
    nl = [max(n, 1) for n in longtail_counts(int(d.labels_per_class), num_classes, float(d.imbalance_labeled))]
    shape = np.asarray(longtail_counts(10**9, num_classes, unlabeled_ratio(d)), dtype=np.float64) / 1e9
    if d.unlabeled_distribution == "reversed":
        shape = shape[::-1]
    avail = have - np.asarray(nl) - int(d.val_per_class)
    if (avail < 0).any():
        c = int(np.argmin(avail))
        raise UserError(f"data.labels_per_class={d.labels_per_class} (N_1 of the long-tailed labeled set) needs {nl[c]} "
                        f"labeled + {d.val_per_class} val images of class {c}, which holds {int(have[c])}; lower it")
    m1 = int(d.unlabeled_per_class) or int(np.floor(np.min(avail / shape) + 1e-9))
    nu = longtail_counts(m1, num_classes, unlabeled_ratio(d))
    if d.unlabeled_distribution == "reversed":
        nu = nu[::-1]
    short = [c for c in range(num_classes) if nu[c] > avail[c]]
    if short:
        c = short[0]
        best = int(np.floor(np.min(avail / shape) + 1e-9))
        raise UserError(f"data.unlabeled_per_class={d.unlabeled_per_class} asks {nu[c]} unlabeled images of class {c}, "
                        f"which has {int(avail[c])} left after labeled/val; valid: 0 (automatic) or <= {best}")
    return nl, nu


def make_setting_split(d: Any, targets: np.ndarray, num_classes: int, seed: int, cache_root=None,
                       dataset_key: str = "", given: Split | None = None) -> Split:
    """The split of ``d.setting`` (a DataConfig or anything with the same attributes). ``given``: a split fixed by
    the dataset's list files (``DatasetBundle.split``: Semi-Aves, ImageNet 1% / 10%), used as it is."""
    if given is not None:
        if d.setting != "balanced" or int(d.val_per_class):
            what = f"data.setting={d.setting}" if d.setting != "balanced" else f"data.val_per_class={d.val_per_class}"
            raise UserError(f"{what} is not valid for {d.dataset}, whose split comes from its list files; valid: "
                            "data.setting=balanced and data.val_per_class=0")
        return given
    if d.setting == "balanced":
        if cache_root is None:
            from .splits import make_split
            return make_split(targets, num_classes, d.labels_per_class, val_per_class=d.val_per_class,
                              include_labeled_in_unlabeled=d.include_labeled_in_unlabeled, seed=seed,
                              order=getattr(d, "split_order", "seeded"))
        return cached_split(cache_root, dataset_key, targets, num_classes, d.labels_per_class,
                            val_per_class=d.val_per_class,
                            include_labeled_in_unlabeled=d.include_labeled_in_unlabeled, seed=seed,
                            order=getattr(d, "split_order", "seeded"))
    if d.setting == "longtail":
        nl, nu = longtail_plan(d, targets, num_classes)
        return make_longtail_split(targets, num_classes, int(d.labels_per_class), max(nu),
                                   imbalance_ratio=float(d.imbalance_labeled), unlabeled_counts=nu,
                                   val_per_class=d.val_per_class,
                                   include_labeled_in_unlabeled=d.include_labeled_in_unlabeled, seed=seed)
    if d.setting == "openset":
        k = seen_count(d, num_classes)
        return make_openset_split(targets, num_classes, d.labels_per_class, range(k), val_per_class=d.val_per_class,
                                  include_labeled_in_unlabeled=d.include_labeled_in_unlabeled, seed=seed)
    raise UserError(f"data.setting={d.setting!r} is not valid; valid: {', '.join(SETTINGS)}")


def seen_count(d: Any, num_classes: int) -> int:
    """Number of seen classes in the open-set setting (the first ``d.seen_classes`` classes)."""
    k = int(d.seen_classes)
    if not 1 <= k < num_classes:
        raise UserError(f"data.seen_classes={k} is not valid for open-set {d.dataset} with {num_classes} classes; "
                        f"valid: 1 <= seen_classes <= {num_classes - 1}")
    return k


def model_classes(d: Any, num_classes: int) -> int:
    """How many outputs the heads have: the seen classes in the open-set setting, all classes otherwise."""
    return seen_count(d, num_classes) if d.setting == "openset" else num_classes


def class_groups(num_classes: int) -> dict[str, np.ndarray]:
    """head / medium / tail class indices (thirds of the classes in index order; class 0 is the head)."""
    return dict(zip(GROUPS, np.array_split(np.arange(num_classes), 3)))


def eval_subsets(d: Any, test_targets: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Name -> indices into the test set of the evaluation sets of this setting.

    ``test`` is always there (all test images; the seen classes' only in open-set); long-tailed adds
    ``test_head`` / ``test_medium`` / ``test_tail``."""
    t = np.asarray(test_targets, dtype=np.int64)
    if d.setting == "openset":
        return {"test": np.flatnonzero(t < seen_count(d, num_classes))}
    out = {"test": np.arange(len(t))}
    if d.setting == "longtail":
        for name, classes in class_groups(num_classes).items():
            out[f"test_{name}"] = np.flatnonzero(np.isin(t, classes))
    return out
