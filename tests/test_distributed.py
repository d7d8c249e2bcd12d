"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process with the same global batch.

One tiny head-level FineSSL run (embedded preset, cached features) three ways: in this process; 2 processes
under torchrun from the start (tests/ddp_entry.py, through the CLI code path); 2 processes that crash at step 17
(checkpoint at 15) and go on with ``torchrun -m finessl_lab train --resume``.

Tolerance, 2 processes vs 1: identical test accuracy, pseudo-label statistics and class pace; losses and weights
within 1e-5 (DDP's mean of the two local gradient means rounds differently from one global mean; everything
else is the same arithmetic). Resume under torchrun vs uninterrupted under torchrun: bit-identical.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from finessl_lab import distributed, io
from finessl_lab.data.batches import Batch
from finessl_lab.errors import UserError
from finessl_lab.presets import resolve
from finessl_lab.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SETS = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
        "data.num_workers=0", "run.checkpoint_every=5", "algorithm.name=finessl", "optim.batch_size=8"]
CRASH_AT = 17  # the hook raises during step 17; the last checkpoint is at step 15
EXACT = ["epoch", "step", "lr", "test_top1", "skipped_steps", "pl_acc", "pl_acc_masked", "pl_mask_ratio"]


def _torchrun(args, cache, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FINESSL_LAB_CACHE=str(cache), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if Path("/sys/class/net/lo").exists():  # gloo over loopback: containers whose hostname does not resolve
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - t0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    cache = tmp_path_factory.getbasetemp() / "finessl_cache"
    with pytest.MonkeyPatch.context() as mp:  # the session's isolated cache (conftest's fixture is per test)
        mp.setenv("FINESSL_LAB_CACHE", str(cache))
        t0 = time.perf_counter()
        one, one_metrics = train(resolve("embedded", sets=SETS), base / "one")  # also builds the feature cache
        wall = {"one": time.perf_counter() - t0}
    p, wall["crash+full"] = _torchrun([str(ROOT / "tests" / "ddp_entry.py"), str(base / "crashed"), str(base / "two"),
                                       str(CRASH_AT), *SETS], cache)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    q, wall["resume"] = _torchrun(["-m", "finessl_lab", "train", "--resume", str(base / "crashed")], cache)
    assert q.returncode == 0, q.stdout[-3000:] + q.stderr[-3000:]
    print(f"wall times (s): {wall}")
    return base, one_metrics, p, q


def _metrics(run):
    return pd.read_csv(run / "metrics.csv")


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    base, one, p, _ = runs
    two = _metrics(base / "two")
    assert list(two.columns) == list(one.columns) and len(two) == len(one) == 3
    pd.testing.assert_frame_equal(two[EXACT], one[EXACT], check_exact=True)  # identical predictions
    loss = [c for c in one.columns if c.startswith(("loss", "alpha", "weight", "mask"))]
    pd.testing.assert_frame_equal(two[loss], one[loss], check_exact=False, rtol=1e-5, atol=1e-5)
    summary = json.loads((base / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 30
    ref, got = (io.load_checkpoint(base / r / "checkpoint.pt") for r in ("one", "two"))
    for k in ref["model"]:
        assert torch.allclose(ref["model"][k], got["model"][k], atol=1e-5, rtol=1e-5), k
    assert torch.equal(ref["algorithm"]["pace"]["counts"], got["algorithm"]["pace"]["counts"])
    assert torch.equal(ref["algorithm"]["pace"]["slots"], got["algorithm"]["pace"]["slots"])
    import finessl_lab as fl

    pred = {r: fl.load_run(base / r).predict("test") for r in ("one", "two")}  # the session's cache (conftest)
    assert (pred["one"]["pred"] == pred["two"]["pred"]).all()  # identical test predictions
    assert abs(pred["one"]["confidence"] - pred["two"]["confidence"]).max() < 1e-5
    assert "2 processes, each 1/2 of the global batch" in p.stdout and p.stdout.count("test top-1") == 1  # rank 0 prints


def test_both_ranks_hold_the_same_class_pace_and_only_rank_0_writes(runs):
    base = runs[0]
    s0, s1 = (torch.load(base / f"crashed.rank{r}.pt") for r in (0, 1))
    assert s0["pace"]["counts"].sum() > 0
    assert torch.equal(s0["pace"]["counts"], s1["pace"]["counts"]) and torch.equal(s0["pace"]["slots"], s1["pace"]["slots"])
    assert torch.equal(s0["margins"], s1["margins"])
    writes0 = (base / "crashed.writes0.txt").read_text()
    assert "checkpoint.pt" in writes0 and "metrics.csv" in writes0 and "summary.json" in writes0
    assert not (base / "crashed.writes1.txt").exists()  # rank 1 wrote nothing, in either run
    assert sorted(f.name for f in (base / "two").iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.csv",
                                                                  "summary.json"]


def test_resume_under_torchrun_continues_exactly(runs):
    base, _, _, q = runs
    pd.testing.assert_frame_equal(_metrics(base / "crashed"), _metrics(base / "two"), check_exact=True)
    ref, got = (io.load_checkpoint(base / r / "checkpoint.pt") for r in ("two", "crashed"))
    assert ref["step"] == got["step"] == 30
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    assert torch.equal(ref["algorithm"]["pace"]["slots"], got["algorithm"]["pace"]["slots"])
    assert "test top-1" in q.stdout


# -- the helpers in a single process: no-ops -------------------------------------------------------------------
def test_helpers_are_no_ops_in_one_process():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    b = Batch(x=torch.randn(4, 3), y=torch.arange(4), u_weak=torch.randn(8, 3), u_index=torch.arange(8))
    assert distributed.shard_batch(b) is b
    t = torch.randn(3, 2)
    assert distributed.gather_rows(t)[0] is t and distributed.all_sum(t) is t
    local = torch.tensor(1.5)
    assert distributed.global_masked_mean(t[:, 0], t[:, 1] > 0, local) is local
    assert distributed.mean_dict({"a": 1.0}) == {"a": 1.0}
    assert distributed.all_true(True) and not distributed.any_flag(False)
    assert distributed.wrap(torch.nn.Linear(2, 2), None) is None


def test_shard_and_divisibility_on_two_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    b = Batch(x=torch.arange(4.0), y=torch.arange(4), u_weak=torch.arange(8.0), u_index=torch.arange(8))
    s = distributed.shard_batch(b)
    assert s.x.tolist() == [2.0, 3.0] and s.y.tolist() == [2, 3] and s.u_index.tolist() == [4, 5, 6, 7]
    assert s.u_strong1 is None
    distributed.check_divisible(4, 28)
    with pytest.raises(UserError, match=r"optim.batch_size=5 does not split over 2 processes; valid: a multiple of 2"):
        distributed.check_divisible(5, 10)


def test_local_processes_share_the_cores(monkeypatch):
    from finessl_lab.data import loading

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = loading.available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loading.available_cores() == max(1, alone // 2)


@pytest.mark.slow
def test_image_mode_two_processes_match_one(tmp_path, tiny_clip_configs):
    """Image mode (tiny random ViT + VPT-deep, a test fixture): 2 processes vs 1, same global batch."""
    import open_clip

    from conftest import TEXT_CFG

    name = "finessl-test-tiny-vit-ddp"
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                                      "patch_size": 8}, "text_cfg": TEXT_CFG}))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), tmp_path / "w.pt")
    sets = ["data.subsample_per_class=3", "data.labels_per_class=2", "data.image_size=32", "data.resize=32",
            "data.crop_padding=4", "data.num_workers=0", "model.peft=vpt_deep", "model.vpt_tokens=2",
            "optim.batch_size=4", "optim.mu=2", "run.epochs=2", "run.steps_per_epoch=3", "run.progress=false",
            "run.feature_cache=false", "algorithm.name=finessl", f"model.backbone={name}",
            f"model.pretrained={tmp_path / 'w.pt'}"]
    _, one = train(resolve("embedded", sets=sets), tmp_path / "one")
    p, _ = _torchrun([str(ROOT / "tests" / "ddp_entry.py"), "--image", str(cfg_file), str(tmp_path / "two"), *sets],
                     os.environ["FINESSL_LAB_CACHE"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = _metrics(tmp_path / "two")
    exact = [c for c in EXACT if c in one.columns]
    pd.testing.assert_frame_equal(two[exact], one[exact], check_exact=True)
    loss = [c for c in one.columns if c.startswith(("loss", "weight", "mask"))]
    pd.testing.assert_frame_equal(two[loss], one[loss], check_exact=False, rtol=1e-5, atol=1e-5)
    ref, got = (io.load_checkpoint(tmp_path / r / "checkpoint.pt")["model"] for r in ("one", "two"))
    assert all(torch.allclose(ref[k], got[k], atol=1e-5, rtol=1e-5) for k in ref)


def test_image_batches_of_two_ranks_are_the_slices_of_the_global_batch():
    """Each rank augments only its slice, seeded by the global position: the two slices are the global batch."""
    import numpy as np
    from PIL import Image

    from finessl_lab.data.batches import ImageBatches, SplitView
    from finessl_lab.data.transforms import build_transforms

    view = SplitView(labeled=np.arange(100, 110), unlabeled=np.arange(20), targets=np.arange(200) % 3,
                     ood=np.zeros(200, bool), batch_size=4, unlabeled_batch=8, seed=3)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(200)]

    class D:
        image_size, resize, crop_padding, hflip, randaugment_ops, randaugment_magnitude, cutout = 6, 8, 2, True, 2, 10, 0.5
        strong_aug, test_view = "randaugment", "center_crop"

    t = build_transforms(D, (0, 0, 0), (1, 1, 1))
    whole = ImageBatches(images, view, t, 0, 3)[2]
    parts = [ImageBatches(images, view, t, 0, 3, rank=(r, 2))[2] for r in (0, 1)]
    for f in ("x", "y", "u_weak", "u_strong1", "u_strong2", "u_index", "u_true", "u_ood"):
        assert torch.equal(torch.cat([getattr(p, f) for p in parts]), getattr(whole, f)), f
    assert len(parts[0].x) == 2 and len(parts[0].u_weak) == 4
