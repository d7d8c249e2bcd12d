"""The run store: finished runs reused, unfinished resumed, missing trained, a different config never reused."""
import shutil

import pandas as pd
import pytest

from finessl_lab.errors import UserError
from finessl_lab.presets import resolve
from finessl_lab.store import RunStore, config_key
from finessl_lab.trainer import Trainer
from conftest import crash_at

SMALL = ["data.subsample_per_class=20", "run.epochs=2", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0", "algorithm.name=finessl"]


def small_cfg(*extra):
    return resolve("embedded", sets=SMALL + list(extra))


def test_key_ignores_only_keys_that_change_no_result():
    base = config_key(small_cfg())
    assert config_key(small_cfg("run.progress=true", "run.eval_batch_size=17", "run.device=cpu")) == base
    for change in ("run.seed=2", "algorithm.finessl.bms=false", "run.steps_per_epoch=11", "optim.lr=0.01",
                   "algorithm.name=fixmatch", "data.labels_per_class=2"):
        assert config_key(small_cfg(change)) != base, change



def test_store_trains_reuses_resumes_and_refuses(tmp_path):
    store = RunStore(tmp_path / "store")
    cfg = small_cfg()
    assert store.status(cfg) == "missing"
    first = store.get(cfg)
    assert first.action == "trained" and store.status(cfg) == "finished"
    mtime = (first.path / "summary.json").stat().st_mtime_ns
    again = store.get(small_cfg("run.progress=true"))  # a key that changes no result: same run, reused
    assert again.action == "reused" and again.path == first.path
    assert (first.path / "summary.json").stat().st_mtime_ns == mtime

    # an interrupted run in the store is resumed, and ends exactly like the uninterrupted one
    other = small_cfg("run.seed=2")
    d = store.path(other)
    with pytest.raises(RuntimeError):
        Trainer(other, d, hooks=[crash_at(12)]).fit()
    assert store.status(other) == "unfinished"
    resumed = store.get(other)
    assert resumed.action == "resumed"
    ref = RunStore(tmp_path / "ref").get(other)
    pd.testing.assert_frame_equal(resumed.metrics, ref.metrics)

    # a directory under the key of cfg that holds a run of another config is refused, never reused
    fake = store.path(small_cfg("run.seed=3"))
    shutil.copytree(first.path, fake)
    with pytest.raises(UserError, match=r"different config \(run.seed: 1 -> 3\)"):
        store.get(small_cfg("run.seed=3"))


def test_store_rejects_bad_root(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="runs_dir"):
        RunStore(tmp_path / "f")
    with pytest.raises(UserError, match="runs_dir"):
        RunStore("")
