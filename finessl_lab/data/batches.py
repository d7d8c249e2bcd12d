"""Batches for one training step, from images (augmented on the fly) or from cached features.

Both sources are *step-indexed*: ``source[step]`` is a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted run would, whatever the number of DataLoader workers.
Every batch holds the labeled weak view, and (if the algorithm uses unlabeled data) the unlabeled weak view,
two strong views, the unlabeled sample indices, and — for analysis only, never for training — their true
labels and OOD flags.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .sampling import LABELED, UNLABELED, VIEWS, replay_positions, replayed_step, step_positions, step_rng
from .transforms import seeded, view_seed


@dataclass
class Batch:
    x: Tensor
    y: Tensor
    u_weak: Tensor | None = None
    u_strong1: Tensor | None = None
    u_strong2: Tensor | None = None
    u_index: Tensor | None = None   # position in the unlabeled set (0 .. num_unlabeled-1)
    u_true: Tensor | None = None    # analysis only
    u_ood: Tensor | None = None     # analysis only

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None
                        else getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})


@dataclass
class SplitView:
    """What a batch source needs to know about the split."""
    labeled: np.ndarray       # train indices
    unlabeled: np.ndarray     # train indices
    targets: np.ndarray       # train targets
    ood: np.ndarray           # bool per train index (True = class unseen in the labeled set)
    batch_size: int
    unlabeled_batch: int      # 0 = the algorithm uses no unlabeled data
    seed: int
    labeled_stream: str = "fresh"   # "replay" = the official cycle(DataLoader) quirk (sampling.replayed_step)
    steps_per_epoch: int = 0

    def labeled_step(self, step: int) -> int:
        """The step whose labeled batch and views ``step`` shows (itself, except in the replayed stream)."""
        if self.labeled_stream != "replay":
            return step
        return replayed_step(step, self.steps_per_epoch, len(self.labeled), self.batch_size)

    def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self.labeled_stream == "replay":
            lab = self.labeled[replay_positions(len(self.labeled), self.batch_size, step, self.steps_per_epoch,
                                                self.seed)]
        else:
            lab = self.labeled[step_positions(len(self.labeled), self.batch_size, step, self.seed, LABELED)]
        if not self.unlabeled_batch:
            return lab, np.empty(0, dtype=np.int64)
        pos = step_positions(len(self.unlabeled), self.unlabeled_batch, step, self.seed, UNLABELED)
        return lab, pos


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rows of a global batch of ``n`` that process ``rank`` of ``world`` trains on (contiguous, n % world == 0)."""
    k = n // world
    return slice(rank * k, (rank + 1) * k)


class ImageBatches(torch.utils.data.Dataset):
    """``dataset[step]`` -> Batch of augmented images; wrap in a DataLoader(batch_size=None) for workers."""

    def __init__(self, images, split: SplitView, transforms, first_step: int, total_steps: int,
                 rank: tuple[int, int] = (0, 1)):
        self.images, self.split, self.t = images, split, transforms
        self.first, self.total = first_step, total_steps
        self.rank = rank  # (rank, world size) under torchrun: build only this rank's slice of the global batch

    def __len__(self) -> int:
        return self.total - self.first

    def _views(self, transform, idx: np.ndarray, stream: int, step: int, start: int = 0) -> Tensor:
        s = self.split.seed  # seeded by the position in the GLOBAL batch (start: where this rank's slice begins)
        return torch.stack([seeded(transform, self.images[int(i)], view_seed(s, stream, step, start + j))
                            for j, i in enumerate(idx)])

    def __getitem__(self, k: int) -> Batch:
        step = self.first + k
        lab, pos = self.split.draw(step)
        ls, us = rank_slice(len(lab), *self.rank), rank_slice(len(pos), *self.rank)
        lab, pos = lab[ls], pos[us]
        y = torch.as_tensor(self.split.targets[lab], dtype=torch.long)
        batch = Batch(x=self._views(self.t.weak, lab, 10, self.split.labeled_step(step), ls.start), y=y)
        if len(pos):
            uidx = self.split.unlabeled[pos]
            batch.u_weak = self._views(self.t.weak, uidx, 11, step, us.start)
            batch.u_strong1 = self._views(self.t.strong, uidx, 12, step, us.start)
            batch.u_strong2 = self._views(self.t.strong, uidx, 13, step, us.start)
            batch.u_index = torch.as_tensor(pos, dtype=torch.long)
            batch.u_true = torch.as_tensor(self.split.targets[uidx], dtype=torch.long)
            batch.u_ood = torch.as_tensor(self.split.ood[uidx], dtype=torch.bool)
        return batch


class FeatureBatches:
    """Batches gathered from cached features: each sample gets one of the K cached weak views and two
    distinct cached strong views (if K >= 2), chosen per step from a seeded stream."""

    def __init__(self, weak: Tensor, strong: Tensor, split: SplitView, device):
        # weak, strong: [K, N_train, D] (any float dtype; gathered rows are cast to fp32)
        self.weak, self.strong, self.split, self.device = weak.to(device), strong.to(device), split, device
        self.k = weak.shape[0]

    def _gather(self, bank: Tensor, idx: np.ndarray, views: np.ndarray) -> Tensor:
        return bank[torch.as_tensor(views, device=self.device), torch.as_tensor(idx, device=self.device)].float()

    def __getitem__(self, step: int) -> Batch:
        lab, pos = self.split.draw(step)
        rng = step_rng(self.split.seed, VIEWS, step)
        y = torch.as_tensor(self.split.targets[lab], dtype=torch.long, device=self.device)
        lab_views = rng.integers(self.k, size=len(lab))  # drawn first, so a replayed step can redraw them
        key = self.split.labeled_step(step)
        if key != step:
            lab_views = step_rng(self.split.seed, VIEWS, key).integers(self.k, size=len(lab))
        batch = Batch(x=self._gather(self.weak, lab, lab_views), y=y)
        if len(pos):
            uidx = self.split.unlabeled[pos]
            vw, v1 = rng.integers(self.k, size=len(uidx)), rng.integers(self.k, size=len(uidx))
            v2 = (v1 + rng.integers(1, self.k, size=len(uidx))) % self.k if self.k > 1 else v1
            batch.u_weak = self._gather(self.weak, uidx, vw)
            batch.u_strong1 = self._gather(self.strong, uidx, v1)
            batch.u_strong2 = self._gather(self.strong, uidx, v2)
            batch.u_index = torch.as_tensor(pos, dtype=torch.long, device=self.device)
            batch.u_true = torch.as_tensor(self.split.targets[uidx], dtype=torch.long, device=self.device)
            batch.u_ood = torch.as_tensor(self.split.ood[uidx], dtype=torch.bool, device=self.device)
        return batch
