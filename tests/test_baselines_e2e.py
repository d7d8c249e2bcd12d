"""Each baseline end to end on the embedded data, tiny (20 images per class, 2 epochs x 5 steps), interrupted
and resumed from its checkpoint: the resumed run's metrics and algorithm state must equal an uninterrupted run's."""
import pandas as pd
import pytest
import torch

from finessl_lab import io
from finessl_lab.presets import resolve
from finessl_lab.trainer import Trainer, train
from conftest import crash_at

TINY = ["data.subsample_per_class=20", "run.epochs=2", "run.steps_per_epoch=5", "run.progress=false",
        "data.num_workers=0", "run.checkpoint_every=3", "optim.mu=2"]



def _equal_states(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_states(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("algorithm", ["pseudolabel", "flexmatch", "freematch", "softmatch", "debiaspl"])
def test_baseline_runs_and_resumes_bit_exact(tmp_path, algorithm):
    cfg = resolve("embedded", sets=TINY + [f"algorithm.name={algorithm}"])
    ref_summary, ref = train(cfg, tmp_path / "ref")
    assert ref_summary["algorithm"] == algorithm and ref_summary["steps"] == 10
    assert ref["pl_acc"].notna().all() and ref["loss"].notna().all()
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(cfg, tmp_path / "crashed", hooks=[crash_at(7)]).fit()
    assert io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["step"] == 6
    summary, metrics = train(cfg, tmp_path / "crashed", resume=True)
    pd.testing.assert_frame_equal(metrics, ref)
    a = io.load_checkpoint(tmp_path / "ref" / "checkpoint.pt")["algorithm"]
    b = io.load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["algorithm"]
    assert a and _equal_states(a, b)
