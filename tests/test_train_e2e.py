"""End to end on the embedded data (real MNIST digits + the packaged EfficientNet-Lite0), kept small:
20 training images per class, 2 cached views, a few dozen steps."""
import json

import pandas as pd
import pytest
import torch

from finessl_lab import io
from finessl_lab.algorithms import REGISTRY
from finessl_lab.cli import main
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer, train
from conftest import crash_at

SMALL = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0"]


def small_cfg(*extra):
    return resolve("embedded", sets=SMALL + list(extra))


@pytest.mark.parametrize("algorithm", ["supervised", "fixmatch", "finessl"])
def test_train_embedded_writes_a_complete_run(tmp_path, algorithm):
    summary, metrics = train(small_cfg(f"algorithm.name={algorithm}"), tmp_path / "run")
    assert set(["config.yaml", "metrics.csv", "summary.json", "checkpoint.pt"]) <= {p.name for p in (tmp_path / "run").iterdir()}
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["algorithm"] == algorithm and on_disk["steps"] == 30
    assert on_disk["test_top1"] == pytest.approx(metrics["test_top1"].iloc[-1])  # last epoch, not best
    assert 10.0 < on_disk["test_top1"] <= 100.0  # 10 classes: must beat chance with 4 labels/class
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["test_top1"].tolist() == pytest.approx(metrics["test_top1"].tolist())
    if algorithm != "supervised":
        assert metrics["pl_acc"].notna().all() and (metrics["pl_mask_ratio"] >= 0).all()



def _model_state(run):
    return io.load_checkpoint(run / "checkpoint.pt")["model"]


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    cfg = small_cfg("algorithm.name=finessl", "run.checkpoint_every=5")
    ref_summary, ref_metrics = train(cfg, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, tmp_path / "crashed", hooks=[crash_at(17)]).fit()
    assert io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 15  # lost only 2 steps
    summary, metrics = train(cfg, tmp_path / "crashed", resume=True)
    pd.testing.assert_frame_equal(metrics, ref_metrics)  # bit-exact on CPU
    assert summary["test_top1"] == ref_summary["test_top1"]
    ref, got = _model_state(tmp_path / "ref"), _model_state(tmp_path / "crashed")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    alg_ref = io.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")["algorithm"]["pace"]["counts"]
    alg_got = io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["algorithm"]["pace"]["counts"]
    assert torch.equal(alg_ref, alg_got)


def test_resume_with_a_different_config_is_refused(tmp_path):
    cfg = small_cfg("algorithm.name=fixmatch")
    train(cfg, tmp_path / "run")
    other = small_cfg("algorithm.name=fixmatch", "algorithm.threshold=0.9")
    with pytest.raises(Exception, match="algorithm.threshold: 0.7 -> 0.9"):
        Trainer(other, tmp_path / "run", resume=True)


def test_cli_train_and_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--preset", "embedded", "--algorithm", "fixmatch", "--out", str(out), "--max-steps", "12",
            "--no-progress"] + sum([["--set", s] for s in SMALL], [])
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 12
    capsys.readouterr()
    assert main(args) == 2  # the directory holds a run now
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "--overwrite" in err and "\n" not in err
    bad = tmp_path / "bad"
    assert main(["train", "--preset", "embedded", "--algorithm", "fixmach", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown algorithm 'fixmach' (did you mean 'fixmatch'?); valid: " + ", ".join(sorted(REGISTRY))
    assert not bad.exists()


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "mnist5k" in out and "efficientnet_lite0" in out
