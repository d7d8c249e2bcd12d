"""Batches for one training step, from images (augmented on the fly) or from cached features.

Both sources are *step-indexed*: ``source[step]`` is a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted run would, whatever the number of DataLoader workers.
Every batch holds the labeled weak view, and (if the algorithm uses unlabeled data) the unlabeled weak view,
two strong views, the unlabeled sample indices, and — for analysis only, never for training — their true
labels and OOD flags.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .sampling import LABELED, UNLABELED, VIEWS, replay_positions, replayed_step, step_positions, step_rng
from .transforms import batch_maker, normalize_uint8, seeded_many, view_seed

VIEW_FIELDS = ("x", "u_weak", "u_strong1", "u_strong2")  # the image (or feature) views of a Batch


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
    # data.views=device: the views are still to be made (device_views.PendingViews; ``x`` then holds the padded uint8
    # images they are cut from, labeled then unlabeled, and u_weak/u_strong1/u_strong2 are None); :meth:`normalized`
    # makes them on the device
    views: Any = None

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None
                        else getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self, device=None) -> "Batch":
        """Every tensor in page-locked memory (DataLoader(pin_memory=True) calls this in its pinning thread), so
        that ``to(cuda, non_blocking=True)`` copies asynchronously."""
        return Batch(**{f.name: None if getattr(self, f.name) is None
                        else getattr(self, f.name).pin_memory(*(() if device is None else (device,)))
                        for f in fields(self)})

    def normalized(self, mean, std) -> "Batch":
        """uint8 image views (uint8 transport) -> fp32 normalised with ``mean``/``std`` where they lie (on the
        device, after ``to``), exactly as the fp32 views would have been; float views are returned as they are.
        Pending views (data.views=device) are made here first, where the batch lies (data/device_views.py)."""
        if self.views is not None:
            return self._made_views(mean, std)
        if self.x.dtype != torch.uint8:  # float views (fp32 transport, cached features): nothing to do
            return self
        if mean is None or std is None:
            raise ValueError("uint8 views need the mean and std to normalise with")
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in VIEW_FIELDS:
            if out[name] is not None:
                out[name] = normalize_uint8(out[name], mean, std)
        return Batch(**out)

    def _made_views(self, mean, std) -> "Batch":
        if mean is None or std is None:
            raise ValueError("uint8 views need the mean and std to normalise with")
        with torch.inference_mode():  # ~250 small uint8 ops: no autograd bookkeeping (~10 % of their time)
            made = self.views.make(self.x)
        views = normalize_uint8(made, mean, std)  # outside: a normal tensor the model may save for backward
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        n = len(self.y)
        out.update(x=views[:n], views=None)
        if self.u_index is not None:
            u = len(self.u_index)
            out.update(u_weak=views[n:n + u], u_strong1=views[n + u:n + 2 * u], u_strong2=views[n + 2 * u:])
        return Batch(**out)


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
        self._padded = None  # fastviews.PaddedImages: resized, padded images, kept across steps

    def __len__(self) -> int:
        return self.total - self.first

    def _views(self, transform, idx: np.ndarray, stream: int, step: int, start: int = 0) -> Tensor:
        s = self.split.seed  # seeded by the position in the GLOBAL batch (start: where this rank's slice begins)
        seeds = [view_seed(s, stream, step, start + j) for j in range(len(idx))]
        maker = batch_maker(transform)
        if maker is not None:  # the same views a batch at a time (data/fastviews.py), the resized images kept
            fast, kind = maker
            if self._padded is None or self._padded.resize is not fast.resize:
                self._padded = fast.cache(self.images)
            out = fast.make(kind, self._padded, idx, seeds)
            if out is not None:
                return out
        return torch.stack(seeded_many(transform, [self.images[int(i)] for i in idx], seeds))

    def __getitem__(self, k: int) -> Batch:
        step = self.first + k
        lab_all, pos_all = self.split.draw(step)
        ls, us = rank_slice(len(lab_all), *self.rank), rank_slice(len(pos_all), *self.rank)
        lab, pos = lab_all[ls], pos_all[us]
        y = torch.as_tensor(self.split.targets[lab], dtype=torch.long)
        if getattr(self.t, "on_device", None) is not None:  # data.views=device
            return self._pending(step, y, lab, pos, (len(lab_all), ls), (len(pos_all), us))
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

    def _pending(self, step: int, y: Tensor, lab: np.ndarray, pos: np.ndarray, lab_rows, pos_rows) -> Batch:
        """data.views=device: the padded images and the drawn parameters of this rank's views (drawn for the
        global batch, a generator per stream and step, then sliced), the views left to the device."""
        from .device_views import draw, view_generator

        dv, s = self.t.on_device, self.split.seed
        if self._padded is None or self._padded.resize is not dv.resize:
            self._padded = dv.cache(self.images)
        uidx = self.split.unlabeled[pos]
        images, sizes = dv.gather(self._padded, np.concatenate([lab, uidx]))  # one tensor: labeled, unlabeled
        g = view_generator(s, 10, self.split.labeled_step(step))
        parts = [dv.params(draw(g, lab_rows[0], None), lab_rows[1], sizes[:len(lab)], np.arange(len(lab)))]
        batch = Batch(x=images, y=y)
        if len(pos):
            src = len(lab) + np.arange(len(uidx))
            for stream, strong in ((11, None), (12, dv.strong), (13, dv.strong)):
                d = draw(view_generator(s, stream, step), pos_rows[0], strong)
                parts.append(dv.params(d, pos_rows[1], sizes[len(lab):], src))
            batch.u_index = torch.as_tensor(pos, dtype=torch.long)
            batch.u_true = torch.as_tensor(self.split.targets[uidx], dtype=torch.long)
            batch.u_ood = torch.as_tensor(self.split.ood[uidx], dtype=torch.bool)
        batch.views = dv.pending(parts, 2 * len(pos))
        return batch


class FeatureBatches:
    """Batches gathered from cached features: each sample gets one of the K cached weak views and two
    distinct cached strong views (if K >= 2), chosen per step from a seeded stream."""

    def __init__(self, weak: Tensor, strong: Tensor, split: SplitView, device):
        # weak, strong: [K, N_train, D] (any float dtype; gathered rows are cast to fp32)
        self.weak, self.strong, self.split, self.device = weak.to(device), strong.to(device), split, device
        self.k, self.n = weak.shape[0], weak.shape[1]
        # [K * N, D] views of the banks: index_select of rows costs O(batch) at any N, while the 2-index advanced
        # indexing bank[views, idx] slowed down 4x at 1.28M slots (issue 13); both gather the same rows
        self._flat = {id(self.weak): self.weak.reshape(-1, *weak.shape[2:]),
                      id(self.strong): self.strong.reshape(-1, *strong.shape[2:])}

    def _gather(self, bank: Tensor, idx: np.ndarray, views: np.ndarray) -> Tensor:
        rows = torch.as_tensor(np.asarray(views, dtype=np.int64) * self.n + idx, device=self.device)
        return self._flat[id(bank)].index_select(0, rows).float()

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
