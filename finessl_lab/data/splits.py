"""Seeded labeled / unlabeled / validation splits of a training set, and an on-disk cache of them.

Every split is built per class from one seeded permutation of that class's indices
(``numpy.random.default_rng([seed, class])``), so a class's split does not depend on the other classes:

* labeled = the first ``N_c`` of the permutation -- nested in ``N`` (the N=1 set is inside the N=2 set, ...);
* val     = the *last* ``V_c`` of the permutation -- the same images whatever ``N``, so runs with different
  label budgets are compared on one validation set;
* unlabeled = every training index except val (``include_labeled_in_unlabeled=True``, the official
  FineSSL behaviour) or except labeled and val.

``order="first"`` replaces the permutation by the class's indices in dataset order: the official FineSSL split (the
first N indices of each class, the same for every seed).

All arrays are sorted int64 indices into the training set. :func:`make_split` gives the same ``N`` for every
class; :func:`make_longtail_split` and :func:`make_openset_split` build on the same per-class core.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..io import write_json

SPLIT_FORMAT = 1
SPLIT_ORDERS = ("seeded", "first")


@dataclass
class Split:
    labeled: np.ndarray
    unlabeled: np.ndarray
    val: np.ndarray
    # open-set only: bool mask over the whole training set, True for images of unseen (out-of-distribution) classes
    ood: np.ndarray | None = field(default=None)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {k: getattr(self, k).tolist() for k in ("labeled", "unlabeled", "val")}
        if self.ood is not None:
            d["ood"] = self.ood.astype(bool).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        arrays = {k: np.asarray(d[k], dtype=np.int64).reshape(-1) for k in ("labeled", "unlabeled", "val")}
        ood = d.get("ood")
        return cls(**arrays, ood=None if ood is None else np.asarray(ood, dtype=bool).reshape(-1))


def _check_targets(targets: Any, num_classes: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise UserError(f"targets must be a 1-D array of class indices, got shape {t.shape} dtype {t.dtype}")
    t = t.astype(np.int64)
    if num_classes < 1:
        raise UserError(f"num_classes={num_classes} must be at least 1")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise UserError(f"targets must lie in [0, {num_classes - 1}] for num_classes={num_classes}; "
                        f"found values in [{t.min()}, {t.max()}]")
    return t


def split_by_counts(targets: Any, num_classes: int, labeled_counts: Sequence[int], *,
                    val_counts: Sequence[int] | None = None, unlabeled_counts: Sequence[int] | None = None,
                    include_labeled_in_unlabeled: bool = True, seed: int = 0, order: str = "seeded") -> Split:
    """The per-class core. ``labeled_counts[c]`` labeled and ``val_counts[c]`` validation images of class c;
    ``unlabeled_counts[c]`` (None = all the rest) caps the unlabeled images of class c, taken from the
    permutation after the labeled ones. Classes with zero labeled images are allowed here (open-set)."""
    t = _check_targets(targets, num_classes)
    if order not in SPLIT_ORDERS:
        raise UserError(f"split order {order!r} is not valid; valid: {', '.join(SPLIT_ORDERS)}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UserError(f"seed={seed!r} must be a non-negative integer")
    nl = np.asarray(labeled_counts, dtype=np.int64).reshape(-1)
    nv = np.zeros(num_classes, np.int64) if val_counts is None else np.asarray(val_counts, dtype=np.int64).reshape(-1)
    for what, arr in (("labeled", nl), ("val", nv)):
        if arr.shape != (num_classes,):
            raise UserError(f"{what} counts must have one entry per class ({num_classes}), got {arr.shape[0]}")
        if (arr < 0).any():
            raise UserError(f"{what} counts must be >= 0, got {int(arr.min())} for class {int(np.argmin(arr))}")
    labeled, unlabeled, val = [], [], []
    for c in range(num_classes):
        idx = np.flatnonzero(t == c)
        if nl[c] + nv[c] > len(idx):
            raise UserError(
                f"class {c} has {len(idx)} training images, too few for {nl[c]} labeled + {nv[c]} validation images; "
                f"the maximum valid labels_per_class for it is {max(len(idx) - nv[c], 0)}"
                + (" (lower val_per_class)" if nv[c] else ""))
        perm = idx if order == "first" else idx[np.random.default_rng([int(seed), c]).permutation(len(idx))]
        lab, rest = perm[: nl[c]], perm[nl[c]: len(idx) - nv[c]]
        val.append(perm[len(idx) - nv[c]:])
        if unlabeled_counts is not None:
            rest = rest[: max(int(unlabeled_counts[c]) - (nl[c] if include_labeled_in_unlabeled else 0), 0)]
        labeled.append(lab)
        unlabeled.append(np.concatenate([lab, rest]) if include_labeled_in_unlabeled else rest)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    return Split(cat(labeled), cat(unlabeled), cat(val))


def make_split(targets: np.ndarray, num_classes: int, labels_per_class: int, *, val_per_class: int = 0,
               include_labeled_in_unlabeled: bool = True, seed: int = 0, order: str = "seeded") -> Split:
    """``labels_per_class`` labeled and ``val_per_class`` validation images of every class (see module doc)."""
    if isinstance(labels_per_class, bool) or int(labels_per_class) != labels_per_class or labels_per_class <= 0:
        raise UserError(f"labels_per_class={labels_per_class!r} must be a positive integer")
    if isinstance(val_per_class, bool) or int(val_per_class) != val_per_class or val_per_class < 0:
        raise UserError(f"val_per_class={val_per_class!r} must be a non-negative integer")
    return split_by_counts(targets, num_classes, [int(labels_per_class)] * num_classes,
                           val_counts=[int(val_per_class)] * num_classes,
                           include_labeled_in_unlabeled=include_labeled_in_unlabeled, seed=seed, order=order)


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """``N_k = N_1 * gamma^(-(k-1)/(K-1))`` rounded down (the official code's ``make_imb_data``), class 0 largest."""
    if imbalance_ratio < 1:
        raise UserError(f"imbalance_ratio={imbalance_ratio} must be >= 1")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * imbalance_ratio ** (-k / (num_classes - 1)) + 1e-9) for k in range(num_classes)]


def make_longtail_split(targets: np.ndarray, num_classes: int, labels_max: int, unlabeled_max: int, *,
                        imbalance_ratio: float, unlabeled_imbalance_ratio: float | None = None,
                        val_per_class: int = 0, include_labeled_in_unlabeled: bool = True, seed: int = 0,
                        unlabeled_counts: Sequence[int] | None = None) -> Split:
    """Long-tailed split: class k gets ``longtail_counts(labels_max)[k]`` labeled images and
    ``longtail_counts(unlabeled_max)[k]`` further unlabeled ones (plus its labeled ones if included).
    ``unlabeled_counts`` (one per class) replaces the latter, e.g. uniform or reversed (data.settings)."""
    if labels_max <= 0 or unlabeled_max < 0:
        raise UserError(f"labels_max={labels_max} must be > 0 and unlabeled_max={unlabeled_max} >= 0")
    nl = [max(n, 1) for n in longtail_counts(labels_max, num_classes, imbalance_ratio)]
    nu = (longtail_counts(unlabeled_max, num_classes, unlabeled_imbalance_ratio or imbalance_ratio)
          if unlabeled_counts is None else [int(n) for n in unlabeled_counts])
    t = _check_targets(targets, num_classes)
    for c in range(num_classes):
        have = int((t == c).sum()) - val_per_class - nl[c]
        if nu[c] > have:
            raise UserError(f"class {c} has {have} images left after labeled/val, too few for {nu[c]} unlabeled; "
                            f"lower unlabeled_max")
    cap = [a + b for a, b in zip(nl, nu)] if include_labeled_in_unlabeled else nu
    return split_by_counts(t, num_classes, nl, val_counts=[val_per_class] * num_classes, unlabeled_counts=cap,
                           include_labeled_in_unlabeled=include_labeled_in_unlabeled, seed=seed)


def make_openset_split(targets: np.ndarray, num_classes: int, labels_per_class: int, seen_classes: Sequence[int], *,
                       val_per_class: int = 0, include_labeled_in_unlabeled: bool = True, seed: int = 0) -> Split:
    """Open-set split: only ``seen_classes`` get labeled (and val) images; images of the other classes appear
    only in the unlabeled set, flagged by ``Split.ood`` (a mask over the training set)."""
    if labels_per_class <= 0:
        raise UserError(f"labels_per_class={labels_per_class!r} must be a positive integer")
    seen = sorted({int(c) for c in seen_classes})
    if not seen or seen[0] < 0 or seen[-1] >= num_classes:
        raise UserError(f"seen_classes must be a non-empty subset of 0..{num_classes - 1}, got {list(seen_classes)[:10]}")
    mask = np.zeros(num_classes, bool)
    mask[seen] = True
    split = split_by_counts(targets, num_classes, np.where(mask, labels_per_class, 0),
                            val_counts=np.where(mask, val_per_class, 0),
                            include_labeled_in_unlabeled=include_labeled_in_unlabeled, seed=seed)
    t = np.asarray(targets, dtype=np.int64)
    split.ood = ~mask[t]
    return split


# -- cache ------------------------------------------------------------------------------------------------

def targets_fingerprint(targets: Any) -> str:
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    return f"{len(t)}:" + hashlib.sha256(t.astype("<i8").tobytes()).hexdigest()[:24]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "dataset"


def _check_cache_root(cache_root: Path) -> Path:
    root = Path(cache_root).expanduser().resolve()
    package = Path(__file__).resolve().parents[1]
    if root == package or package in root.parents:
        raise UserError(f"cache directory {root} is inside the installed package {package}; choose another run.cache_dir")
    return root


def cached_split(cache_root: Path, dataset_key: str, targets: Any, num_classes: int, labels_per_class: int, *,
                 val_per_class: int = 0, include_labeled_in_unlabeled: bool = True, seed: int = 0,
                 order: str = "seeded") -> Split:
    """:func:`make_split`, stored as JSON at ``cache_root/splits/<dataset_key>-<params hash>.json``.

    A cached file is used only if its parameters and the targets' fingerprint match; otherwise the split is
    recomputed and the file atomically replaced."""
    params = {"format": SPLIT_FORMAT, "kind": "balanced", "dataset_key": str(dataset_key),
              "num_classes": int(num_classes), "labels_per_class": int(labels_per_class),
              "val_per_class": int(val_per_class), "include_labeled_in_unlabeled": bool(include_labeled_in_unlabeled),
              "seed": int(seed)}
    if order != "seeded":  # added only when set, so existing cache files keep their names
        params["order"] = str(order)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = _check_cache_root(cache_root) / "splits" / f"{_safe(str(dataset_key))}-{digest}.json"
    fingerprint = targets_fingerprint(targets)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("params") == params and stored.get("targets") == fingerprint:
            split = Split.from_dict(stored["split"])
            n = len(np.asarray(targets))
            if all(a.size == 0 or (a.min() >= 0 and a.max() < n) for a in (split.labeled, split.unlabeled, split.val)):
                return split
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing or unreadable: recompute
    split = make_split(targets, num_classes, labels_per_class, val_per_class=val_per_class,
                       include_labeled_in_unlabeled=include_labeled_in_unlabeled, seed=seed, order=order)
    write_json(path, {"params": params, "targets": fingerprint, "split": split.to_dict()})
    return split
