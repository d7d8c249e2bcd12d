"""Presets for the paper's table rows and figure panels beyond Table 1, and their offline (embedded) counterparts.

Names say what they are: ``<table|fig><N>_<dataset>_<setting>_<method>``. Each preset is a dict of overrides of
a paper preset (CLIP ViT-B/16, VPT-deep 50, 30 x 500 steps) or of ``embedded``; ``finessl-lab presets`` lists
them with one line each. Choices the paper does not state are marked "assumed" in the description.

Offline counterparts (``embedded_*``) run on CPU from the packaged data and weights: 5,000 real MNIST digits
(or Debian's Fashion-MNIST) and an ImageNet-pretrained EfficientNet-Lite0, NOT CLIP. They show the same
mechanism on a much smaller, much easier problem; their numbers are not comparable to the paper's.
"""
from __future__ import annotations

import copy
from typing import Callable

# name -> one line; presets.py builds the dicts below with its own paper base
DESCRIPTIONS: dict[str, str] = {}


def _add(out: dict, name: str, cfg: dict, line: str) -> None:
    out[name] = cfg
    DESCRIPTIONS[name] = line


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def paper_presets(paper: Callable[..., dict], embedded: dict) -> dict[str, dict]:
    """All table / figure presets; ``paper(dataset, n, batch=32, gamma=3.0)`` is presets._paper."""
    out: dict[str, dict] = {}
    c100 = paper("cifar100", 4)

    # Table 2: Semi-Aves (200 classes, imbalanced): the FGVC7 list files under data.root (data/datasets.py);
    # labeled = l_train (official FineSSL: anno_l_train.json; USB uses l_train_val), unlabeled = u_train_in
    # (+ u_train_out, flagged OOD). The labeled set comes from the list, so labels_per_class does not apply.
    _add(out, "table2_semi_aves_in", _merge(paper("semi_aves", 1), {"data": {"label_list": "l_train"}}),
         "Table 2: Semi-Aves, labeled l_train, in-class unlabeled u_train_in (FGVC7 list files under data.root)")
    for unl, extra, line in (("in", {}, "in-class unlabeled u_train_in"),
                             ("in_out", {"unlabeled_out": True}, "unlabeled u_train_in + u_train_out (OOD-flagged)")):
        for algo in ("fixmatch", "debiaspl", "finessl"):
            _add(out, f"table2_semi_aves_{unl}_{algo}",
                 _merge(paper("semi_aves", 1), {"data": {"label_list": "l_train", **extra}, "algorithm": {"name": algo}}),
                 f"Table 2: Semi-Aves, {algo}, labeled l_train, {line}")
    # Table 3: ImageNet 1% / 10% labels (SimCLR subset lists); official semi-ImageNet config: batch 16, mu 2
    for pct, n in (("1pct", 13), ("10pct", 128)):
        _add(out, f"table3_imagenet_{pct}", _merge(paper("imagenet", n), {"optim": {"batch_size": 16, "mu": 2}}),
             f"Table 3: ImageNet-1k, {pct.replace('pct', '%')} labels ({n} per class), batch 16, mu 2 (official config)")
        subset = f"{pct.replace('pct', 'percent')}.txt"
        for algo in ("fixmatch", "flexmatch", "freematch", "softmatch", "debiaspl", "finessl"):
            _add(out, f"table3_imagenet_{pct}_{algo}",
                 _merge(paper("imagenet", n), {"data": {"label_list": subset}, "optim": {"batch_size": 16, "mu": 2},
                                               "algorithm": {"name": algo}}),
                 f"Table 3: ImageNet-1k, {algo}, labeled = SimCLR's {subset} (under data.root or "
                 "data.root/imagenet_subsets), batch 16, mu 2 (official config)")
    # Table 4: PEFT variants on CIFAR-100 N4 (ViT-B/16 CLIP)
    for peft, extra, line in (("vpt_deep", {}, "VPT-deep, 50 tokens"), ("lora", {"lora_rank": 16}, "LoRA on q, v, rank 16"),
                              ("adapter", {"adapter_dim": 8}, "Adapter, bottleneck 8"),
                              ("adaptformer", {"adapter_dim": 8}, "AdaptFormer, bottleneck 8, scale 0.1")):
        _add(out, f"table4_cifar100_n4_{peft}", _merge(c100, {"model": {"peft": peft, **extra}}),
             f"Table 4: CIFAR-100 N4, CLIP ViT-B/16, {line}")
    # Table 7: CLIP ResNet-50 with BN-tuning / BitFit / SSF
    for peft, line in (("bn", "BN-tuning"), ("bitfit", "BitFit"), ("ssf", "SSF")):
        for ds, n in (("cifar100", 4), ("cifar10", 4), ("food101", 4)):
            _add(out, f"table7_{ds}_n{n}_rn50_{peft}", _merge(paper(ds, n), {"model": {"backbone": "RN50", "peft": peft}}),
                 f"Table 7: {ds} N{n}, CLIP RN50, {line}")
    # Table 9: long-tailed CIFAR-100 (N_1 = 150 labeled, M_1 = 300 unlabeled: the usual LTSSL protocol, assumed)
    for rho in (10, 20):
        for dist in ("consistent", "uniform", "reversed"):
            lt = {"data": {"setting": "longtail", "labels_per_class": 150, "unlabeled_per_class": 300,
                           "imbalance_labeled": float(rho), "imbalance_unlabeled": float(rho),
                           "unlabeled_distribution": dist, "include_labeled_in_unlabeled": False}}
            _add(out, f"table9_cifar100_lt_rho{rho}_{dist}", _merge(c100, lt),
                 f"Table 9: long-tailed CIFAR-100, rho={rho}, unlabeled {dist}, N_1=150 / M_1=300 (assumed); "
                 "head/medium/tail accuracy")
    # Table 10: LP / FFT variants on CIFAR-100 N4
    t10 = {"lp": ({"peft": "linear"}, "linear probe"), "fft": ({"peft": "full", "head_init": "random"}, "full fine-tuning"),
           "lp_ft": ({"peft": "full", "head_init": "random", "lp_steps": 5000}, "LP-FT: 10 epochs probing, then all"),
           "fft_dagger": ({"peft": "full", "head_init": "text"}, "FFT-dagger: FFT with text (semantic) head init")}
    for name, (model, line) in t10.items():
        o = {"model": model}
        if model["peft"] == "full":
            o["optim"] = {"lr": 0.001}  # full fine-tuning needs a much smaller lr (assumed)
        _add(out, f"table10_cifar100_n4_{name}", _merge(c100, o), f"Table 10: CIFAR-100 N4, CLIP ViT-B/16, {line}")
    # Table 11: ImageNet-21k ViT-B/16 (timm; weights downloaded from the Hugging Face hub, or a local file)
    for ds, n in (("cifar100", 4), ("cifar100", 25), ("cifar10", 4)):
        _add(out, f"table11_{ds}_n{n}_in21k_vit",
             _merge(paper(ds, n), {"model": {"backbone": "timm:vit_base_patch16_224.augreg_in21k", "pretrained": "hub"}}),
             f"Table 11: {ds} N{n}, ImageNet-21k ViT-B/16 (timm augreg_in21k), VPT-deep 50; heads from class means")
    # Fig. 1: VPT vs FFT vs LP across label regimes (the from-scratch WideResNet baseline is not a preset)
    for n in (4, 25, 100):
        for name, model in (("vpt", {"peft": "vpt_deep"}), ("fft", {"peft": "full"}), ("lp", {"peft": "linear"})):
            o = {"model": model, **({"optim": {"lr": 0.001}} if name == "fft" else {})}
            _add(out, f"fig1_cifar100_n{n}_{name}", _merge(paper("cifar100", n), o),
                 f"Fig. 1: CIFAR-100 N{n}, CLIP ViT-B/16, {name.upper()}")
    # Fig. 4: open-set CIFAR-100, 50 seen classes at N5 / N10; the other 50 only unlabeled (OOD)
    for n in (5, 10):
        _add(out, f"fig4_cifar100_openset_n{n}",
             _merge(paper("cifar100", n), {"data": {"setting": "openset", "seen_classes": 50}}),
             f"Fig. 4: open-set CIFAR-100, classes 0-49 seen at N{n}, 50-99 unlabeled OOD; seen-class accuracy "
             "(add --set algorithm.finessl.dls=false for the no-DLS bar)")
    # Fig. 5b: VPT prompt length
    for length in (5, 10, 25, 50, 100, 200):
        _add(out, f"fig5b_cifar100_n4_vpt{length}", _merge(c100, {"model": {"vpt_tokens": length}}),
             f"Fig. 5b: CIFAR-100 N4, VPT-deep with {length} prompt tokens")

    # -- offline counterparts ------------------------------------------------------------------------------
    for n in (1, 4, 25):
        _add(out, f"embedded_n{n}", _merge(embedded, {"data": {"labels_per_class": n}}),
             f"offline: MNIST-5k N{n}, EfficientNet-Lite0 (ImageNet, NOT CLIP), frozen, cached features")
    _add(out, "embedded_lt_rho10", _merge(embedded, {"data": {
        "setting": "longtail", "labels_per_class": 25, "imbalance_labeled": 10.0, "imbalance_unlabeled": 10.0,
        "unlabeled_per_class": 300, "include_labeled_in_unlabeled": False}}),
        "offline Table 9: long-tailed MNIST-5k, rho=10 labeled (N_1=25) and unlabeled (M_1=300); head 0-3 / medium 4-6 / tail 7-9")
    for rho in (10, 20):  # offline Table 9 grid: labeled rho (N_1=25) x unlabeled distribution (M_1=300)
        for dist in ("consistent", "uniform", "reversed"):
            _add(out, f"embedded_lt_rho{rho}_{dist}", _merge(embedded, {"data": {
                "setting": "longtail", "labels_per_class": 25, "imbalance_labeled": float(rho),
                "imbalance_unlabeled": float(rho), "unlabeled_distribution": dist, "unlabeled_per_class": 300,
                "include_labeled_in_unlabeled": False}}),
                f"offline Table 9: long-tailed MNIST-5k, labeled rho={rho} (N_1=25), unlabeled {dist} (M_1=300)")
    _add(out, "embedded_openset", _merge(embedded, {"data": {"setting": "openset", "seen_classes": 5}}),
         "offline Fig. 4: open-set MNIST-5k, digits 0-4 seen (N4), 5-9 unlabeled OOD; seen-digit accuracy")
    _add(out, "embedded_fashion_n4", _merge(embedded, {"data": {"dataset": "fashion_mnist", "subsample_per_class": 500}}),
         "offline: Fashion-MNIST (Debian dataset-fashion-mnist), first 500 train images per class, N4, full 10k test set")
    _add(out, "embedded_fashion5k_n4", _merge(embedded, {"data": {"dataset": "fashion5k"}}),
         "offline Fig. 6: Fashion-MNIST 5k (Debian dataset-fashion-mnist; seeded 400 train + 100 test per class, "
         "shaped like MNIST-5k), N4")
    _add(out, "fig1_embedded_scratch_cnn", _merge(embedded, {
        "model": {"backbone": "scratch_cnn", "pretrained": "none", "peft": "full", "head_init": "random"},
        "run": {"feature_cache": False},
        # MNIST's own scale (28 px digits): a from-scratch CNN gains nothing from the 128 px the pretrained
        # backbone needs, and each image-mode step costs ~16x less at 32 px (15 steps: 11 s vs 58 s at 64 px)
        "data": {"num_workers": 0, "image_size": 32, "resize": 32, "crop_padding": 4}}),
        "offline Fig. 1: a small CNN trained from scratch on the MNIST-5k images at 32 px (image mode), N4")
    # PEFT of the embedded CNN's top 2 blocks (last inverted-residual block + head conv) from the partial
    # feature cache (build_partial.py): the offline counterparts of Tables 7 / 10, Fig. 1 and the detach ablation.
    # Heads at lr 0.03; fully fine-tuned blocks at optim.backbone_lr 0.003 (0.03 diverges; README). BN / BitFit /
    # SSF / LP keep the embedded heads (class means, fidelity clean); FFT / LP-FT start random heads as the paper's.
    top = {"run": {"feature_cache": True}, "model": {"tune_blocks": 2}}
    lp_steps = embedded["run"]["epochs"] * embedded["run"]["steps_per_epoch"] // 3  # LP-FT: the first third probes
    for name, model, line in (
            ("bn", {"peft": "bn"}, "BN-tuning (BatchNorm affine) of the top 2 blocks"),
            ("bitfit", {"peft": "bitfit"}, "BitFit (biases) of the top 2 blocks"),
            ("ssf", {"peft": "ssf"}, "SSF (scale-shift) of the top 2 blocks"),
            ("fft_top2", {"peft": "full", "head_init": "random"},
             "FFT = every weight of the top 2 blocks (not the whole network), random heads as the paper's FFT"),
            ("last2", {"peft": "last_k", "head_init": "random"},
             "last_k = the top 2 blocks tuned (same parameters as fft_top2), random heads"),
            ("lpft_top2", {"peft": "full", "head_init": "random", "lp_steps": lp_steps},
             f"LP-FT: {lp_steps} steps probing (random heads), then the top 2 blocks fine-tuned"),
            ("fft_top2_classmean", {"peft": "full", "head_init": "class_mean"},
             "FFT-dagger counterpart: FFT of the top 2 blocks, heads from the labeled class means (no text tower)")):
        o = _merge(top, {"model": model})
        if model["peft"] in ("full", "last_k"):
            o["optim"] = {"backbone_lr": 0.003}
        _add(out, f"embedded_n4_{name}", _merge(embedded, o),
             f"offline Tables 7/10: MNIST-5k N4, EfficientNet-Lite0 (ImageNet, NOT CLIP), {line}, partial feature cache")
    _add(out, "embedded_n4_lp", copy.deepcopy(embedded),
         "offline Table 10: MNIST-5k N4, EfficientNet-Lite0 (ImageNet, NOT CLIP), linear probe (frozen, cached features)")
    return out
