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


def test_recorders_that_process_steps_together_give_the_per_step_values():
    """ClassDistributionRecorder and EpochMetricsRecorder keep the steps' tensors and reduce them every
    DEFER_STEPS steps (and at epoch end / checkpoint): the counts and confidences of a per-step computation, also
    across a mid-epoch state_dict / load_state_dict."""
    import torch

    from finessl_lab.diagnostics import recorders as R
    from finessl_lab.hooks import StepRecord

    g = torch.Generator().manual_seed(0)
    C, U, steps = 5, 7, R.DEFER_STEPS * 2 + 9
    recs = []
    for s in range(steps):
        pm = torch.softmax(torch.randn(U, C, generator=g), 1)
        recs.append(StepRecord(s, 0, {}, torch.arange(U), pm, torch.softmax(torch.randn(U, C, generator=g), 1),
                               pm.argmax(1), (torch.rand(U, generator=g) < 0.5).float(), torch.ones(U),
                               torch.randint(C, (U,), generator=g), torch.rand(U, generator=g) < 0.2))
    cd, em = R.ClassDistributionRecorder(C), R.EpochMetricsRecorder(C)
    for k, r in enumerate(recs):
        cd.on_step(r)
        em.on_step(r)
        if k == R.DEFER_STEPS + 3:  # a mid-epoch checkpoint and resume into fresh recorders
            cd_state, em_state = cd.state_dict(), em.state_dict()
            cd, em = R.ClassDistributionRecorder(C), R.EpochMetricsRecorder(C)
            cd.load_state_dict(cd_state)
            em.load_state_dict(em_state)
    cd.on_epoch_end(0, {})
    out = em.on_epoch_end(0, {})
    pl = torch.cat([r.pseudo_label for r in recs])
    mask = torch.cat([r.mask for r in recs]) > 0
    want = [{"epoch": 0, "class": c, "count": int((pl == c).sum()), "masked_count": int((pl[mask] == c).sum()),
             "fraction": float((pl == c).sum()) / len(pl), "masked_fraction": float((pl[mask] == c).sum()) / int(mask.sum())}
            for c in range(C)]
    assert cd.rows == want
    conf = torch.cat([r.probs_main.max(1).values for r in recs])
    conf_aux = torch.cat([r.probs_aux.max(1).values for r in recs])
    ood = torch.cat([r.is_ood for r in recs])
    correct = (pl == torch.cat([r.y_true for r in recs])) & ~ood
    from finessl_lab.diagnostics import metrics as M

    assert out["pl_avg_conf_main"] == float(conf.mean())
    assert out["pl_ece_main"] == M.expected_calibration_error(conf[~ood], correct[~ood], em.n_bins)
    assert out["pl_auroc_aux"] == M.separation_auroc(conf_aux[~ood], correct[~ood])
    assert out["pl_auroc_ood_main"] == M.separation_auroc(conf, ~ood)
