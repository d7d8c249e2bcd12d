"""load_run / Run.predict, the recorders, Experiment reuse and hook errors, on a tiny embedded run."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import finessl_lab as fl
from finessl_lab import io
from finessl_lab.build import build_experiment
from finessl_lab.diagnostics import metrics as M
from finessl_lab.errors import UserError
from finessl_lab.hooks import Hook
from finessl_lab.trainer import HookError, Trainer

SMALL = ["data.subsample_per_class=20", "run.epochs=3", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0"]


def small_cfg(*extra):
    return fl.resolve("embedded", sets=SMALL + list(extra))


class LastPredictions(Hook):
    """Keeps the trainer's own end-of-training test predictions of both heads."""
    name = "last_predictions"

    def on_train_end(self, trainer):
        from finessl_lab.trainer import predict

        e = trainer.exp
        self.logits = {h: predict(e.model, e.eval_sets["test"], e.device, e.precision, 256, head=h) for h in ("main", "aux")}


@pytest.fixture(scope="module")
def finessl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "finessl"
    hook = LastPredictions()
    with pytest.MonkeyPatch.context() as mp:  # the session's isolated cache (conftest's fixture is per test)
        mp.setenv("FINESSL_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "finessl_cache"))
        summary, _ = fl.train(small_cfg("algorithm.name=finessl", "run.record=true", "data.val_per_class=2"), out,
                              hooks=[hook])
    return out, summary, hook


def test_top_level_exports():
    for name in ("resolve", "train", "load_run", "Hook", "StepRecord", "Run", "Config"):
        assert name in fl.__all__ and getattr(fl, name).__doc__
    # every public function of the analysis modules is documented
    import inspect

    from finessl_lab import plots
    from finessl_lab.diagnostics import frames, metrics, recorders, summary

    for mod in (metrics, recorders, summary, frames, plots):
        for n, obj in vars(mod).items():
            if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod.__name__:
                assert obj.__doc__, f"{mod.__name__}.{n} has no docstring"


def test_load_run_round_trip_predictions_equal_end_of_training(finessl_run):
    out, summary, hook = finessl_run
    run = fl.load_run(out)
    assert run.summary == summary and len(run.metrics) == 3 and run.config.algorithm.name == "finessl"
    for head in ("main", "aux"):
        p = run.predict_proba("test", head)
        assert np.allclose(p, torch.softmax(hook.logits[head], 1).numpy(), atol=1e-6)
        frame = run.predict("test", head)
        assert list(frame.columns) == ["index", "dataset_index", "y_true", "is_ood", "pred", "confidence", "correct", "probs"]
        assert np.array_equal(frame.pred, p.argmax(1)) and np.allclose(frame.confidence, p.max(1))
    # test top-1 of the loaded run = summary (rounded, no float32 noise)
    t = run.predict("test")
    assert M.top1(t.y_true, t.pred) == pytest.approx(summary["test_top1"], abs=1e-9)
    assert summary["test_top1"] == round(summary["test_top1"], 4)
    # the unlabeled split, both views; index = the recorders' / StepRecord's index
    e = run.experiment
    u = run.predict("unlabeled", "main", view="weak")
    assert len(u) == len(e.split.unlabeled) and (u.dataset_index.to_numpy() == e.split.unlabeled).all()
    assert not np.allclose(u.confidence, run.predict("unlabeled", view="clean").confidence)
    assert len(run.predict("labeled")) == len(e.split.labeled) and len(run.predict("val")) == 20
    with pytest.raises(UserError, match="weak"):
        run.predict("test", view="weak")
    with pytest.raises(UserError, match="split"):
        run.predict("train")


def test_records_are_tidy_and_consistent(finessl_run):
    out, summary, _ = finessl_run
    run = fl.load_run(out)
    s = run.records("samples")
    assert set(s.epoch) == {2} and len(s) == 10 * 4 * 32  # last epoch: 10 steps x mu*batch unlabeled samples
    assert (s.correct == (s.pseudo_label == s.y_true)).all() and s.confidence_aux.notna().all()
    d = run.records("class_distribution")
    assert sorted(set(d.epoch)) == [0, 1, 2] and d.groupby("epoch")["count"].sum().eq(10 * 128).all()
    m = run.records("epoch_metrics")
    assert list(m.epoch) == [0, 1, 2] and m.test_ece_aux.notna().all()
    # the last epoch's pseudo-label AUROC equals the one recomputed from the per-sample records
    assert m.pl_auroc_main.iloc[-1] == pytest.approx(M.separation_auroc(s.confidence_main, s.correct))
    assert run.metrics["pl_auroc_main"].tolist() == pytest.approx(m.pl_auroc_main.tolist())
    ca = run.records("class_accuracy")
    last = ca[(ca["epoch"] == 2) & (ca["head"] == "main")]
    t = run.predict("test")
    assert last.accuracy.tolist() == pytest.approx((100 * M.per_class_accuracy(t.y_true, t.pred, 10).accuracy).tolist())


def test_fixmatch_has_no_aux_head_and_no_records(tmp_path):
    summary, _ = fl.train(small_cfg("algorithm.name=fixmatch", "run.epochs=1"), tmp_path / "fm")
    run = fl.load_run(tmp_path / "fm")
    with pytest.raises(UserError, match="trains no aux head"):
        run.predict("test", head="aux")
    with pytest.raises(UserError, match="run.record=false"):
        run.records("samples")
    # the aux head is not counted as trained
    assert summary["trainable_params"] == run.model.main.weight.numel() + sum(
        p.numel() for n, p in run.model.main.named_parameters() if n != "weight")


def test_load_run_refuses_unfinished_corrupted_and_foreign(tmp_path, finessl_run):
    with pytest.raises(UserError, match="does not exist"):
        fl.load_run(tmp_path / "nope")
    src, _, _ = finessl_run
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.yaml", "metrics.csv", "checkpoint.pt"):
        (bad / f).write_bytes((src / f).read_bytes())
    with pytest.raises(UserError, match="unfinished"):
        fl.load_run(bad)
    (bad / "summary.json").write_bytes((src / "summary.json").read_bytes())
    data = (bad / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(data[:-10] + bytes(10))
    with pytest.raises(UserError, match="corrupted"):
        fl.load_run(bad)
    ck = io.load_checkpoint(src / "checkpoint.pt")
    io.save_checkpoint(bad / "checkpoint.pt", {**ck, "format": 99})
    with pytest.raises(UserError, match="another version"):
        fl.load_run(bad)
    (bad / "config.yaml").write_text((src / "config.yaml").read_text() + "\nnew_section: {x: 1}\n")
    with pytest.raises(UserError, match="cannot read"):
        fl.load_run(bad)


def test_experiment_reuse_starts_from_fresh_heads_and_rejects_other_configs():
    cfg = small_cfg("algorithm.name=fixmatch", "run.epochs=1")
    exp = build_experiment(cfg, progress=False)
    a = Trainer(cfg, experiment=exp).fit()
    b = Trainer(cfg, experiment=exp).fit()
    assert a["test_top1"] == b["test_top1"]  # not continued from the previous heads
    other = small_cfg("algorithm.name=finessl", "run.epochs=1", "optim.lr=0.01")
    Trainer(other, experiment=exp)  # algorithm and lr may change
    with pytest.raises(UserError, match="data.labels_per_class"):
        Trainer(small_cfg("algorithm.name=fixmatch", "data.labels_per_class=2"), experiment=exp)
    with pytest.raises(UserError, match="unlabeled"):
        Trainer(small_cfg("algorithm.name=supervised"), experiment=exp)
    cfg.data.labels_per_class = 2  # editing the config the experiment was built from is caught too
    with pytest.raises(UserError, match="data.labels_per_class: 4 -> 2"):
        Trainer(cfg, experiment=exp)


class Boom(Hook):
    name = "boom"

    def on_step(self, record):
        if record.step == 12:
            raise ValueError("bad value")


def test_hook_error_names_hook_step_and_resume_hint(tmp_path):
    with pytest.raises(HookError, match=r"hook 'boom' \(Boom.on_step\) raised ValueError: bad value at step 13 of 30; "
                                        r"last checkpoint: .*after step 10.*--resume"):
        fl.train(small_cfg("algorithm.name=fixmatch"), tmp_path / "r", hooks=[Boom()])
