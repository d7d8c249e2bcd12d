"""compare(jobs=2) trains runs in a process pool and gives the same table as the sequential comparison."""
import pandas as pd
import pytest

from finessl_lab.compare import compare
from finessl_lab.errors import UserError

from test_reliability_runs import small_cfg


def test_compare_jobs_equals_sequential(tmp_path, capsys):
    cfg = small_cfg()
    seq = compare(cfg, ["supervised", "fixmatch"], [1], tmp_path / "seq", progress=False)
    par = compare(cfg, ["supervised", "fixmatch"], [1], tmp_path / "par", progress=True, jobs=2)
    pd.testing.assert_frame_equal(seq, par)
    a, b = (pd.read_csv(tmp_path / d / "results.csv").drop(columns="wall_time_s") for d in ("seq", "par"))
    pd.testing.assert_frame_equal(a, b)  # per-run test top-1 identical, run by run
    assert "compare (2 jobs)" in capsys.readouterr().err
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "par").rglob("checkpoint.pt")}
    compare(cfg, ["supervised", "fixmatch"], [1], tmp_path / "par", jobs=2)  # finished runs reused, none retrained
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("jobs", [0, 65, True, "2"])
def test_compare_jobs_is_checked(jobs, tmp_path):
    with pytest.raises(UserError, match="jobs="):
        compare(small_cfg(), ["supervised"], [1], tmp_path, jobs=jobs)
