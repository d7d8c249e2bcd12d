"""Config -> the pieces of an experiment: data, split, backbone/PEFT/heads, batch source, evaluation sets.

Two modes share everything downstream: *image* mode augments images on the fly and runs the backbone (+PEFT)
every step; *feature-cache* mode (run.feature_cache) trains heads on cached frozen-backbone features.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from . import distributed
from .config import Config
from .data.batches import Batch, FeatureBatches, ImageBatches, SplitView
from .data.datasets import DatasetBundle, load_dataset, resolve_normalization
from .data.loading import worker_plan
from .data.features import ImageViews, extract, ignore_stop_signals, load_or_compute
from .data.settings import eval_subsets, make_setting_split, model_classes
from .data.splits import Split
from .data.transforms import build_transforms
from .device import resolve_device, resolve_precision, weight_dtype
from .errors import UserError
from .io import cache_dir
from .models.checks import check_model_config
from .models import SSLModel, build_model
from .models.backbones import build_backbone
from .models.peft import apply_peft


@dataclass
class EvalSet:
    """Inputs ready for the model (a feature tensor or an image DataLoader) and their targets."""
    inputs: object
    targets: Tensor


@dataclass
class Experiment:
    cfg: Config
    device: torch.device
    precision: str
    bundle: DatasetBundle
    split: Split
    split_view: SplitView
    model: SSLModel
    batches: Callable[[int, int], Iterable[Batch]]   # (first_step, total_steps) -> batches in step order
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)
    feature_path: Path | None = None
    transforms: object = None            # the data transforms (test / weak / strong), for analysis views
    features: dict | None = None         # feature-cache mode: the cached features (train_clean, test, weak, strong)
    unlabeled_eval: EvalSet | None = None   # the unlabeled set, clean view, in unlabeled-index order (FPL/IFPL/GRIP)
    intra_op_threads: int | None = None  # image mode with loader workers: the cores the workers leave to training
    sharded: bool = False                # torchrun: ``batches`` already yields this rank's slice (image mode)
    initial_state: dict = field(init=False, repr=False)  # the model's trainable weights as built (fresh heads)

    def __post_init__(self):
        self.cfg = copy.deepcopy(self.cfg)  # a snapshot: editing the caller's config later cannot hide a mismatch
        self.initial_state = self.model.trainable_state_dict()

    def reset_model(self) -> None:
        """Put the fresh, untrained heads (and PEFT weights) back: every Trainer starts from them."""
        self.model.load_trainable_state_dict(self.initial_state)

    @property
    def num_classes(self) -> int:
        """Outputs of the heads: all classes, or the seen ones in the open-set setting (data/settings.py)."""
        return self.model.main.num_classes


def transform_description(cfg: Config, mean, std) -> dict:
    d = cfg.resolved().data  # 'auto' items as the fidelity implies: the cache key names the real views
    desc = {"image_size": d.image_size, "resize": d.resize, "crop_padding": d.crop_padding, "hflip": d.hflip,
            "ra_ops": d.randaugment_ops, "ra_mag": d.randaugment_magnitude, "cutout": d.cutout,
            "mean": list(mean), "std": list(std)}
    # fidelity items that change the cached views (added only when not the earlier default, so caches built
    # before these options existed keep their key)
    if d.strong_aug not in ("randaugment", "auto"):
        desc["strong_aug"] = d.strong_aug
    if d.test_view not in ("center_crop", "auto"):
        desc["test_view"] = d.test_view
    return desc


def unlabeled_batch_size(cfg: Config, uses_unlabeled: bool) -> int:
    return cfg.optim.mu * cfg.optim.batch_size if uses_unlabeled else 0


def check_labels_fit(cfg: Config, bundle: DatasetBundle) -> None:
    """data.labels_per_class (+ data.val_per_class) must fit in the smallest class: name it and the maximum."""
    d = cfg.data
    counts = np.bincount(np.asarray(bundle.train.targets, dtype=np.int64), minlength=bundle.num_classes)
    c = int(np.argmin(counts))
    have = int(counts[c])
    if d.labels_per_class + d.val_per_class <= have:
        return
    where = f" with data.subsample_per_class={d.subsample_per_class}" if d.subsample_per_class else ""
    if d.val_per_class >= have:
        raise UserError(f"data.val_per_class={d.val_per_class} leaves no labeled images: class {bundle.classes[c]!r} of "
                        f"{d.dataset} has only {have} training images{where}; valid: val_per_class <= {have - 1}")
    extra = f" minus data.val_per_class={d.val_per_class}" if d.val_per_class else ""
    raise UserError(f"data.labels_per_class={d.labels_per_class} is more than class {bundle.classes[c]!r} of {d.dataset} "
                    f"holds ({have} training images{where}{extra}); valid: 1 <= labels_per_class <= {have - d.val_per_class}")


def _needs_unlabeled_pass(cfg: Config) -> bool:
    """Only algorithms that override ``on_round_start`` (FPL, IFPL, GRIP) predict the whole unlabeled set."""
    from .algorithms import REGISTRY, Algorithm

    return REGISTRY[cfg.algorithm.name].on_round_start is not Algorithm.on_round_start


def make_split_view(cfg: Config, targets: np.ndarray, split, uses_unlabeled: bool) -> SplitView:
    """The run's sampling view of its split (labeled / unlabeled streams, OOD flags, batch sizes, seed)."""
    ood = getattr(split, "ood", None)
    view = SplitView(labeled=split.labeled, unlabeled=split.unlabeled, targets=targets,
                     ood=np.zeros(len(targets), dtype=bool) if ood is None else ood,
                     batch_size=cfg.optim.batch_size, unlabeled_batch=unlabeled_batch_size(cfg, uses_unlabeled),
                     seed=cfg.run.seed, labeled_stream=cfg.data.labeled_stream,
                     steps_per_epoch=cfg.run.steps_per_epoch)
    view.labeled_step(0)  # a replayed stream with fewer labeled images than one batch fails here, not mid-run
    return view


def build_experiment(cfg: Config, uses_unlabeled: bool = True, progress: bool = True) -> Experiment:
    cfg = cfg.validate().resolved()  # fidelity items left at 'auto' take the values `cfg.fidelity` implies
    check_model_config(cfg.model)  # names and weights paths fail fast, before data or weights are loaded
    if cfg.data.views == "device" and not cfg.run.feature_cache and cfg.data.strong_aug != "randaugment_mc":
        raise UserError(f"data.views=device makes RandAugmentMC strong views only, not data.strong_aug="
                        f"{cfg.data.strong_aug} (fidelity {cfg.fidelity}); set data.strong_aug=randaugment_mc "
                        "or data.views=worker")
    device = resolve_device(cfg.run.device)
    precision = resolve_precision(cfg.run.precision, device)
    root = cache_dir(cfg.run.cache_dir)
    bundle = load_dataset(cfg.data, root)
    if bundle.split is None:  # a list-defined split (Semi-Aves, ImageNet 1%/10%) does not use labels_per_class
        check_labels_fit(cfg, bundle)
    split = make_setting_split(cfg.data, bundle.train.targets, bundle.num_classes, cfg.run.seed, root, bundle.key,
                               given=bundle.split)
    n_out = model_classes(cfg.data, bundle.num_classes)  # the seen classes only in the open-set setting
    tests = eval_subsets(cfg.data, bundle.test.targets, bundle.num_classes)
    targets = np.asarray(bundle.train.targets)
    view = make_split_view(cfg, targets, split, uses_unlabeled)
    backbone = build_backbone(cfg.model, seed=cfg.run.seed)
    mean, std = (backbone.mean, backbone.std) if cfg.data.normalize == "backbone" else \
        resolve_normalization(cfg.data.normalize, cfg.data.dataset)
    transforms = build_transforms(cfg.data, mean, std)
    y_lab = torch.as_tensor(targets[split.labeled], dtype=torch.long)
    workers, threads = worker_plan(cfg.data.num_workers)  # workers + intra-op threads within the cores
    common = dict(device=device, batch_size=cfg.run.eval_batch_size, num_workers=workers, progress=progress)

    if cfg.run.feature_cache and cfg.model.peft != "linear":  # top-k blocks tuned from cached activations
        from .build_partial import partial_experiment
        return partial_experiment(cfg, device, precision, bundle, split, view, backbone, transforms, root, tests,
                                  n_out, common, transform_description(cfg, mean, std))
    if cfg.run.feature_cache:
        backbone.to(device)
        feats, path = load_or_compute(root, backbone, bundle, transforms, transform_description(cfg, mean, std),
                                      cfg.run.feature_views, cfg.run.view_seed, precision=precision, **common)
        clean = feats["train_clean"].float()
        text = (backbone.text_prototypes(bundle.classes[:n_out], cfg.model.prompt_template).float().cpu()
                if backbone.has_text and cfg.model.head_init in ("prototype", "text") else None)
        model = build_model(cfg.model, n_out, bundle.classes[:n_out], feature_dim=clean.shape[1],
                            text_prototypes=text,
                            labeled_features=clean[split.labeled], labeled_targets=y_lab,
                            generator=torch.Generator().manual_seed(cfg.run.seed)).to(device, weight_dtype(precision))
        del backbone
        source = FeatureBatches(feats["weak"], feats["strong"], view, device)
        batches = lambda first, total: (source[s] for s in range(first, total))  # noqa: E731
        test_t = torch.as_tensor(bundle.test.targets)
        evals = {name: EvalSet(feats["test"][torch.as_tensor(idx)].float().to(device), test_t[torch.as_tensor(idx)])
                 for name, idx in tests.items()}
        if len(split.val):
            evals["val"] = EvalSet(clean[split.val].to(device), torch.as_tensor(targets[split.val]))
        unl = (EvalSet(clean[split.unlabeled], torch.as_tensor(targets[split.unlabeled]))  # CPU; predict moves chunks
               if _needs_unlabeled_pass(cfg) else None)
        return Experiment(cfg, device, precision, bundle, split, view, model, batches, evals, path,
                          transforms=transforms, features=feats, unlabeled_eval=unl)

    apply_peft(backbone, cfg.model, generator=torch.Generator().manual_seed(cfg.run.seed))
    backbone.to(device)
    labeled_feats = None
    if cfg.model.head_init == "class_mean" or (cfg.model.head_init == "prototype" and not backbone.has_text):
        labeled_feats = extract(backbone, bundle.train.subset(split.labeled).images, transforms.test, stream=None,
                                seed=0, desc="features: labeled (head init)", **common).float()
    model = build_model(cfg.model, n_out, bundle.classes[:n_out], backbone=backbone,
                        labeled_features=labeled_feats, labeled_targets=y_lab,
                        generator=torch.Generator().manual_seed(cfg.run.seed)).to(device, weight_dtype(precision))

    # training views: uint8 from the workers (data.transport), normalised on the device by the trainer; or
    # (data.views=device) padded images gathered in the training process, every core training, the views made on
    # the device (data/device_views.py)
    on_device = cfg.data.views == "device"
    train_transforms = build_transforms(cfg.data, mean, std, uint8=cfg.data.transport == "uint8",
                                        device_views=on_device)
    train_workers = 0 if on_device else workers

    def batches(first: int, total: int):
        ds = ImageBatches(bundle.train.images, view, train_transforms, first, total,
                          rank=(distributed.rank(), distributed.world_size()))  # torchrun: this rank's slice only
        return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=train_workers,
                                           pin_memory=device.type == "cuda", persistent_workers=False,
                                           worker_init_fn=ignore_stop_signals if train_workers else None)

    def image_eval(ds) -> EvalSet:
        loader = torch.utils.data.DataLoader(ImageViews(ds.images, transforms.test, stream=None, seed=0), batch_size=cfg.run.eval_batch_size,
                                             num_workers=workers, pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0,  # evaluated every epoch: no respawn
                                             worker_init_fn=ignore_stop_signals if workers else None)
        return EvalSet(loader, torch.as_tensor(ds.targets))

    evals = {name: image_eval(bundle.test.subset(idx)) for name, idx in tests.items()}
    if len(split.val):
        evals["val"] = image_eval(bundle.train.subset(split.val))
    unl = image_eval(bundle.train.subset(split.unlabeled)) if _needs_unlabeled_pass(cfg) else None
    return Experiment(cfg, device, precision, bundle, split, view, model, batches, evals, None,
                      transforms=transforms, unlabeled_eval=unl, sharded=distributed.is_distributed(),
                      intra_op_threads=threads if train_workers and device.type == "cpu" else None)
