"""The FineSSL model: a frozen backbone with PEFT parameters, a main cosine head and an auxiliary cosine head.

    features = backbone(x)                     # or x itself in feature-cache mode (backbone is None)
    main_logits = model.main(features)
    aux_logits  = model.aux(features.detach())  # the algorithm detaches: aux loss never reaches the PEFT params

The auxiliary head starts as an exact copy of the main head. Only the PEFT parameters and the two heads train;
``trainable_state_dict`` holds exactly those, keyed by their module path in the model.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError, check_choice
from .backbones import Backbone, build_backbone, list_backbones
from .heads import CosineHead, class_mean_prototypes, random_unit_rows
from .peft import PEFTS, PEFTS_BY_FAMILY, apply_peft

__all__ = ["Backbone", "CosineHead", "PEFTS", "PEFTS_BY_FAMILY", "SSLModel", "apply_peft", "build_backbone",
           "build_model", "class_mean_prototypes", "list_backbones"]

HEAD_INITS = ("auto", "random", "text", "class_mean", "prototype")


class SSLModel(nn.Module):
    """Backbone (or None in feature-cache mode) + main and auxiliary cosine heads."""

    def __init__(self, backbone: Backbone | None, main: CosineHead, aux: CosineHead | None = None, lp_steps: int = 0):
        super().__init__()
        self.backbone = backbone
        self.main = main
        self.aux = aux if aux is not None else copy.deepcopy(main)
        # LP-FT: the first lp_steps training forwards run the backbone without gradients (linear probing)
        self.lp_steps = int(lp_steps) if backbone is not None else 0
        self.register_buffer("lp_steps_done", torch.zeros((), dtype=torch.long))

    def features(self, x: Tensor) -> Tensor:
        """Image features [B, D]; in feature-cache mode ``x`` already is the features and is returned unchanged.
        With LP-FT (``lp_steps`` > 0) a training forward with gradients enabled counts one step (the trainer runs
        the backbone once per step); during the first ``lp_steps`` the PEFT parameters get no gradient."""
        if self.backbone is None:
            return x
        if self.lp_steps and self.training and torch.is_grad_enabled():
            self.lp_steps_done += 1
            if int(self.lp_steps_done) <= self.lp_steps:
                with torch.no_grad():
                    return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Main-head logits (a convenience for evaluation)."""
        return self.main(self.features(x))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """PEFT parameters + both heads, nothing else (no duplicates)."""
        params = list(self.backbone.peft_parameters) if self.backbone is not None else []
        params += list(self.main.parameters()) + list(self.aux.parameters())
        seen: set[int] = set()
        return [p for p in params if not (id(p) in seen or seen.add(id(p)))]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def _trainable_named(self) -> dict[str, nn.Parameter]:
        ids = {id(p) for p in self.trainable_parameters()}
        return {n: p for n, p in self.named_parameters() if id(p) in ids}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Copies of what training changes (PEFT + heads), keyed by module path, e.g. ``backbone.prompts``."""
        sd = {n: p.detach().clone() for n, p in self._trainable_named().items()}
        if self.lp_steps:
            sd["lp_steps_done"] = self.lp_steps_done.clone()
        return sd

    @torch.no_grad()
    def load_trainable_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Strict inverse of :meth:`trainable_state_dict`; any key or shape disagreement is a UserError."""
        own = self._trainable_named()
        if self.lp_steps:
            if "lp_steps_done" not in sd:
                raise UserError("trainable state has no 'lp_steps_done' but this model uses LP-FT (model.lp_steps > 0)")
            self.lp_steps_done.copy_(sd["lp_steps_done"])
            sd = {k: v for k, v in sd.items() if k != "lp_steps_done"}
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        shapes = [f"{k} (given {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        problems = [f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                    if keys]
        if problems:
            raise UserError(f"trainable state does not fit this model ({'; '.join(problems)}); was it saved with "
                            "the same backbone, PEFT and number of classes?")
        for k, p in own.items():
            p.copy_(sd[k].to(device=p.device, dtype=p.dtype))


def _initial_prototypes(cfg: Any, backbone: Backbone | None, classnames: list[str], num_classes: int, dim: int,
                        labeled_features: Tensor | None, labeled_targets: Tensor | None,
                        generator: torch.Generator | None, text_prototypes: Tensor | None) -> Tensor:
    how = check_choice("model.head_init", str(cfg.head_init), HEAD_INITS)
    has_text = text_prototypes is not None or (backbone is not None and backbone.has_text)
    if how == "auto":  # an unresolved config: the default fidelity (official) starts both heads at random
        how = "random"
    if how == "prototype":
        how = "text" if has_text else ("class_mean" if labeled_features is not None else "random")
    if how == "text":
        if text_prototypes is not None:
            return text_prototypes
        if not has_text:
            where = f"backbone {backbone.name!r} has none" if backbone is not None else "feature-cache mode has no backbone"
            raise UserError(f"model.head_init='text' needs a backbone with a text tower (a CLIP model); {where}; "
                            "use model.head_init=class_mean or random")
        if len(classnames) != num_classes:
            raise UserError(f"text head init needs {num_classes} class names, got {len(classnames)}")
        return backbone.text_prototypes(list(classnames), str(cfg.prompt_template))
    if how == "class_mean":
        if labeled_features is None or labeled_targets is None:
            raise UserError("model.head_init='class_mean' needs the labeled images' features; "
                            "use model.head_init=random or a backbone with a text tower")
        return class_mean_prototypes(labeled_features, labeled_targets, num_classes)
    return random_unit_rows(num_classes, dim, generator)


def build_model(cfg_model: Any, num_classes: int, classnames: list[str], feature_dim: int | None = None,
                backbone: Backbone | None = None, labeled_features: Tensor | None = None,
                labeled_targets: Tensor | None = None, generator: torch.Generator | None = None,
                text_prototypes: Tensor | None = None) -> SSLModel:
    """Build the SSL model from a ModelConfig-like ``cfg_model``.

    * image mode: no ``backbone`` and no ``feature_dim`` -> ``build_backbone`` + ``apply_peft``; a given
      ``backbone`` gets ``apply_peft`` unless PEFT was already applied to it;
    * feature-cache mode: ``feature_dim`` and no backbone (``features(x)`` returns ``x``).

    Head init (``cfg_model.head_init``): 'text' (backbone text tower, or precomputed ``text_prototypes`` [C, D],
    e.g. cached in feature-cache mode), 'class_mean' (``labeled_features`` [N, D] / ``labeled_targets`` [N]),
    'random' (official: unit-norm uniform rows from ``generator``), 'prototype' = text if available, else
    class_mean if labeled features are given, else random; 'auto' (a config not resolved by
    ``Config.resolved()``) = random, the default fidelity's choice. ``generator`` also seeds the VPT prompt init. The aux head is a deep copy of the main head.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if classnames and len(classnames) != num_classes:
        raise UserError(f"got {len(classnames)} class names for {num_classes} classes")
    if backbone is None and feature_dim is None:
        backbone = build_backbone(cfg_model)
    if backbone is not None and backbone.peft is None:
        apply_peft(backbone, cfg_model, generator=generator)
    if backbone is not None and feature_dim is not None and int(feature_dim) != backbone.feature_dim:
        raise UserError(f"feature_dim {feature_dim} does not match backbone {backbone.name!r} ({backbone.feature_dim})")
    dim = backbone.feature_dim if backbone is not None else int(feature_dim)
    scale_param = getattr(cfg_model, "scale_param", "auto")
    scale_param = "direct" if scale_param == "auto" else scale_param  # unresolved: the official form
    main = CosineHead(dim, num_classes, scale=float(cfg_model.logit_scale), learn_scale=bool(cfg_model.learn_scale),
                      scale_param=scale_param)
    main.init_weight(_initial_prototypes(cfg_model, backbone, list(classnames or []), num_classes, dim,
                                         labeled_features, labeled_targets, generator, text_prototypes))
    if backbone is not None:
        main.to(next(backbone.parameters()).device)
    return SSLModel(backbone, main, copy.deepcopy(main), lp_steps=int(getattr(cfg_model, "lp_steps", 0) or 0))
