"""The README's main job at full size (about 3-5 minutes on 2 CPU cores): run with `pytest -m slow`."""
import pandas as pd
import pytest

from finessl_lab.cli import main


@pytest.mark.slow
def test_embedded_main_job(tmp_path, capsys):
    out = tmp_path / "embedded"
    assert main(["compare", "--preset", "embedded", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "NOT CLIP" in printed
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 9 and set(results["algorithm"]) == {"supervised", "fixmatch", "finessl"}
    mean = results.groupby("algorithm")["test_top1"].mean()
    # sanity, not a tuned target: unlabeled data must help a 4-labels-per-class probe by a wide margin
    assert mean["fixmatch"] > mean["supervised"] + 5 and mean["finessl"] > mean["supervised"] + 5
    assert (results["steps"] == 2000).all()
