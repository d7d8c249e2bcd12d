"""What the ImageNet weights bring at each image size, and what each size costs (issue 13, target 4).

For each size (64 / 96 / 128 px; resize = size, crop padding = size / 8, as the embedded preset scales):

  probe        a 4-label-per-class logistic-regression probe (L2-normalised features, sklearn defaults) on the
               clean (test-view) features of MNIST-5k, trained on 4 random training digits per class and scored
               on the 1,000 test digits; mean over ``--splits`` labeled draws. Once with the ImageNet-pretrained
               EfficientNet-Lite0 (``embedded``), once with the same network randomly initialised (``none``);
  build        the embedded preset's feature-cache build (clean + test + 2 weak + 2 strong views, 21,000 images)
               into an empty cache directory, as the main job pays it;
  main job     at the sizes given to ``--main-job``: ``finessl-lab compare --preset embedded`` (3 algorithms x 3 seeds) on the cache
               just built; cold main job = build + this (the same work as one cold run, split in two processes);
  backbone     img/s of the backbone alone at that size (batch 64, inference_mode, channels_last), measured in the
               same run, so that a time taken on a loaded machine can be scaled to an unloaded one.

    .venv/bin/python benchmarks/px_study.py [--sizes 64 96 128] [--splits 10] [--main-job 128] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch


def sets_for(px: int) -> list[str]:
    return [f"data.image_size={px}", f"data.resize={px}", f"data.crop_padding={px // 8}"]


def probe(train_f: torch.Tensor, train_y: np.ndarray, test_f: torch.Tensor, test_y: np.ndarray, per_class: int,
          splits: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    tr = torch.nn.functional.normalize(train_f.float(), dim=1).numpy()
    te = torch.nn.functional.normalize(test_f.float(), dim=1).numpy()
    accs = []
    for s in range(splits):
        rng = np.random.default_rng(s)
        idx = np.concatenate([rng.choice(np.flatnonzero(train_y == c), per_class, replace=False)
                              for c in np.unique(train_y)])
        clf = LogisticRegression(max_iter=2000).fit(tr[idx], train_y[idx])
        accs.append(100.0 * float((clf.predict(te) == test_y).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def probe_indices(train_y: np.ndarray, per_class: int, splits: int) -> np.ndarray:
    """Every training index some labeled draw of :func:`probe` uses (the same draws, seeds 0..splits-1)."""
    used = set()
    for s in range(splits):
        rng = np.random.default_rng(s)
        for c in np.unique(train_y):
            used.update(rng.choice(np.flatnonzero(train_y == c), per_class, replace=False).tolist())
    return np.array(sorted(used))


def load_full_bundle(cfg):
    from finessl_lab.data.datasets import load_dataset
    from finessl_lab.io import cache_dir

    return load_dataset(cfg.data, cache_dir(cfg.run.cache_dir))


def backbone_rate(backbone, px: int, n: int = 512) -> float:
    x = torch.randn(64, 3, px, px).contiguous(memory_format=torch.channels_last)
    backbone.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        backbone(x)
        t0 = time.perf_counter()
        for _ in range(n // 64):
            backbone(x)
        rate = n / (time.perf_counter() - t0)
    backbone.to(memory_format=torch.contiguous_format)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--main-job", type=int, nargs="*", default=[],
                    help="sizes at which to also time `compare --preset embedded` on the cache just built")
    ap.add_argument("--quick", type=int, default=0, metavar="N",
                    help="no full build: time the build on an N-image slice (N train + N/4 test, all views) and scale "
                         "it to the whole set; probes on the labeled draws' images + the test set only (same result)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default, the cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from finessl_lab.build import build_experiment
    from finessl_lab.data.features import extract
    from finessl_lab.data.loading import worker_plan
    from finessl_lab.models.backbones import build_backbone
    from finessl_lab.presets import resolve

    rows = []
    for px in a.sizes:
        tmp = tempfile.mkdtemp(prefix=f"finessl-px{px}-")
        cfg = resolve("embedded", sets=sets_for(px) + [f"run.cache_dir={tmp}"])
        rate = backbone_rate(build_backbone(cfg.model), px)
        if a.quick:
            from types import SimpleNamespace

            from finessl_lab.data.features import compute
            from finessl_lab.data.transforms import build_transforms

            full = load_full_bundle(cfg)
            pre_bb = build_backbone(cfg.model)
            exp = SimpleNamespace(transforms=build_transforms(cfg.resolved().data, pre_bb.mean, pre_bb.std))
            y_tr, y_te = np.asarray(full.train.targets), np.asarray(full.test.targets)
            n = a.quick
            sl = SimpleNamespace(train=full.train.subset(np.arange(n)), test=full.test.subset(np.arange(n // 4)))
            t0 = time.perf_counter()
            compute(pre_bb, sl, exp.transforms, cfg.run.feature_views, cfg.run.view_seed, "cpu",
                    batch_size=cfg.run.eval_batch_size, num_workers=worker_plan(cfg.data.num_workers).workers,
                    progress=False)
            views_slice = n * (1 + 2 * cfg.run.feature_views) + n // 4
            views_full = len(y_tr) * (1 + 2 * cfg.run.feature_views) + len(y_te)
            build_s = (time.perf_counter() - t0) * views_full / views_slice
            used = probe_indices(y_tr, a.per_class, a.splits)
            kw = dict(stream=None, seed=0, device="cpu", batch_size=64,
                      num_workers=worker_plan(cfg.data.num_workers).workers, progress=False)
            feats = {}
            torch.manual_seed(0)  # the random init
            rnd_bb = build_backbone(resolve("embedded", sets=["model.pretrained=none"]).model)
            for tag, bb in (("pre", pre_bb), ("rnd", rnd_bb)):
                f_tr = torch.zeros(len(y_tr), bb.feature_dim)
                f_tr[used] = extract(bb, full.train.subset(used).images, exp.transforms.test, desc="t", **kw).float()
                feats[tag] = (f_tr, extract(bb, full.test.images, exp.transforms.test, desc="t", **kw))
            pre = probe(feats["pre"][0], y_tr, feats["pre"][1], y_te, a.per_class, a.splits)
            ran = probe(feats["rnd"][0], y_tr, feats["rnd"][1], y_te, a.per_class, a.splits)
            rows.append(row := {"px": px, "pretrained_probe": round(pre[0], 1), "pretrained_sd": round(pre[1], 1),
                                "random_probe": round(ran[0], 1), "random_sd": round(ran[1], 1),
                                "build_s": round(build_s, 1), "build_measured": f"slice of {views_slice} views",
                                "backbone_img_s": round(rate)})
            print(row, flush=True)
            continue
        t0 = time.perf_counter()
        exp = build_experiment(cfg, progress=False)  # the dataset, the split and the whole feature cache
        build_s = time.perf_counter() - t0
        bundle = exp.bundle
        y_tr, y_te = np.asarray(bundle.train.targets), np.asarray(bundle.test.targets)
        pre = probe(exp.features["train_clean"], y_tr, exp.features["test"], y_te, a.per_class, a.splits)
        rnd_cfg = resolve("embedded", sets=sets_for(px) + ["model.pretrained=none"])
        torch.manual_seed(0)  # the random init
        rnd = build_backbone(rnd_cfg.model)
        kw = dict(stream=None, seed=0, device="cpu", batch_size=64,
                  num_workers=worker_plan(cfg.data.num_workers).workers, progress=False)
        f_tr = extract(rnd, bundle.train.images, exp.transforms.test, desc="random train", **kw)
        f_te = extract(rnd, bundle.test.images, exp.transforms.test, desc="random test", **kw)
        ran = probe(f_tr, y_tr, f_te, y_te, a.per_class, a.splits)
        del exp
        row = {"px": px, "pretrained_probe": round(pre[0], 1), "pretrained_sd": round(pre[1], 1),
               "random_probe": round(ran[0], 1), "random_sd": round(ran[1], 1), "build_s": round(build_s, 1),
               "backbone_img_s": round(rate)}
        if px in a.main_job:
            out = os.path.join(tmp, "main")
            t1 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "finessl_lab", "compare", "--preset", "embedded", "--out", out,
                            "--no-progress", "--cache-dir", tmp] + [x for s in sets_for(px) for x in ("--set", s)],
                           check=True, stdout=subprocess.DEVNULL)
            row["main_after_cache_s"] = round(time.perf_counter() - t1, 1)
            row["cold_main_job_s"] = round(build_s + row["main_after_cache_s"], 1)
            row["main_summary"] = pd.read_csv(os.path.join(out, "summary.csv")).set_index("algorithm")[
                "test_top1_mean"].round(1).to_dict()
        rows.append(row)
        print(row, flush=True)
    print(f"load average at the end: {os.getloadavg()}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
