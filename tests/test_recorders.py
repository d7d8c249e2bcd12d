"""Recorders: state through checkpoints (an interrupted + resumed run records exactly what an uninterrupted one
does), the window option, config wiring, the tensorboard option and the diagnose command."""
import pandas as pd
import pytest

import finessl_lab as fl
from finessl_lab.cli import main
from finessl_lab.diagnostics.recorders import RECORDS_DIR, load_table
from finessl_lab.errors import UserError
from finessl_lab.trainer import HookError, Trainer
from conftest import crash_at

SMALL = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0", "run.record=true", "algorithm.name=finessl"]



def _tables(run_dir):
    return {n: load_table(run_dir / RECORDS_DIR, n) for n in ("samples", "class_distribution", "epoch_metrics",
                                                              "class_accuracy")}


def test_records_survive_interruption_and_resume(tmp_path):
    cfg = fl.resolve("embedded", sets=SMALL + ["run.checkpoint_every=5", "run.record_every=2"])
    fl.train(cfg, tmp_path / "ref")
    with pytest.raises(HookError, match="simulated crash"):
        Trainer(cfg, tmp_path / "cut", hooks=[crash_at(27)]).fit()
    assert not (tmp_path / "cut" / RECORDS_DIR / "samples.parquet").exists()
    fl.train(cfg, tmp_path / "cut", resume=True)
    ref, cut = _tables(tmp_path / "ref"), _tables(tmp_path / "cut")
    assert sorted(set(ref["samples"]["epoch"])) == [1, 2]  # every 2nd epoch (epoch index 1) + the last
    for name in ref:
        pd.testing.assert_frame_equal(ref[name], cut[name])


def test_tensorboard_option(tmp_path):
    cfg = fl.resolve("embedded", sets=SMALL + ["run.record=false", "run.tensorboard=true", "run.epochs=1"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install tensorboard"):
            Trainer(cfg, tmp_path / "tb")
        return
    fl.train(cfg, tmp_path / "tb")
    assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_diagnose_command(tmp_path, capsys):
    fl.train(fl.resolve("embedded", sets=SMALL + ["run.record=false", "run.epochs=1"]), tmp_path / "cmp" / "a")
    assert main(["diagnose", str(tmp_path / "cmp"), "--out", str(tmp_path / "d.csv")]) == 0
    out = capsys.readouterr().out
    assert "test_ece_aux" in out and "pl_entropy_nats" in out
    table = pd.read_csv(tmp_path / "d.csv")
    assert len(table) == 1 and table["test_ece_aux"].notna().all()
    assert main(["diagnose", str(tmp_path / "nothing")]) == 2
