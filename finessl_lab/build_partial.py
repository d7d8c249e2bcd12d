"""Feature-cache mode with a PEFT on the top blocks of the embedded EfficientNet (``run.feature_cache=true``,
``model.peft`` in bn / bitfit / ssf / full / last_k, ``model.tune_blocks=k``).

The frozen activations below the last k blocks are cached for every view (data.features.load_or_compute_partial);
training runs the top k blocks (with the PEFT's parameters) + the heads on them. So "full" / "FFT" here means
*the top k blocks* fine-tuned, not the whole network; BN / BitFit / SSF act on those k blocks only. The
frozen part below is exactly what image mode computes, so results equal image-mode training of the same
parameters on the same cached views (up to float rounding).
"""
from __future__ import annotations

import torch

from .data.batches import FeatureBatches
from .data.features import load_or_compute_partial
from .errors import UserError
from .models import build_model
from .models.backbones import EfficientNetBackbone, TopBlocks

PARTIAL_PEFTS = ("bn", "bitfit", "ssf", "full", "last_k")


def partial_experiment(cfg, device, precision, bundle, split, view, backbone, transforms, root, tests, n_out, common,
                       transform_desc):
    from .build import EvalSet, Experiment

    if not isinstance(backbone, EfficientNetBackbone) or cfg.model.peft not in PARTIAL_PEFTS:
        raise UserError(f"run.feature_cache=true with model.peft={cfg.model.peft!r} (top-block tuning from cached "
                        f"activations) needs model.backbone=efficientnet_lite0 and a PEFT in {', '.join(PARTIAL_PEFTS)}; "
                        "valid: model.peft=linear, or run.feature_cache=false")
    k = int(cfg.model.tune_blocks)
    top = TopBlocks(backbone, k)  # validates k before the (long) extraction
    backbone.to(device)
    acts, path = load_or_compute_partial(root, backbone, k, bundle, transforms, transform_desc, cfg.run.feature_views,
                                         cfg.run.view_seed, **common)
    top.to(device)
    y_lab = torch.as_tensor(view.targets[split.labeled], dtype=torch.long)
    clean = acts["train_clean"]
    with torch.no_grad():
        lab_feats = top(clean[split.labeled].to(device)).float().cpu()
    model = build_model(cfg.model, n_out, bundle.classes[:n_out], backbone=top, labeled_features=lab_feats,
                        labeled_targets=y_lab, generator=torch.Generator().manual_seed(cfg.run.seed)).to(device)
    source = FeatureBatches(acts["weak"], acts["strong"], view, device)
    batches = lambda first, total: (source[s] for s in range(first, total))  # noqa: E731
    test_t = torch.as_tensor(bundle.test.targets)
    evals = {name: EvalSet(acts["test"][torch.as_tensor(idx)].to(device), test_t[torch.as_tensor(idx)])
             for name, idx in tests.items()}
    if len(split.val):
        evals["val"] = EvalSet(clean[split.val].to(device), torch.as_tensor(view.targets[split.val]))
    return Experiment(cfg, device, precision, bundle, split, view, model, batches, evals, path)
