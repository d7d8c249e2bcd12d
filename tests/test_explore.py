"""The teaching explorer: retrains from the feature cache from fresh heads, and a slider change (retrain + redraw
of the three figures) takes <= 2 s on 2 CPU cores."""
import io
import time

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from finessl_lab.errors import UserError
from finessl_lab.explore import BiasExplorer

SETS = ["data.subsample_per_class=20", "data.num_workers=0"]


def _redraw(explorer, **knobs):
    """(result, CPU seconds of this process): the work is single-threaded (one intra-op thread for head-level
    training on CPU, matplotlib), so on an idle 2-core machine the CPU time is the wall time; on a shared, loaded
    one the wall time only measures the neighbours."""
    t0 = time.process_time()
    result = explorer.run(**knobs)
    for fig in explorer.figures(result):
        fig.savefig(io.BytesIO(), format="png", dpi=72)  # what display() does in JupyterLab
        plt.close(fig)
    return result, time.process_time() - t0


def test_slider_change_retrains_from_fresh_heads_within_two_seconds():
    explorer = BiasExplorer(steps=100, sets=SETS)
    first, _ = _redraw(explorer)  # builds the experiment once (split, cached features)
    assert set(first.distribution.columns) >= {"class", "count", "rank"} and first.distribution["count"].sum() > 0
    assert set(first.confidences["head"]) == {"main", "aux"} and set(first.confidences["status"]) <= {"correct", "wrong"}
    again, _ = _redraw(explorer)
    pd.testing.assert_frame_equal(first.confidences, again.confidences)  # fresh heads: the same run twice
    seconds = []
    for knobs in ({"smoothing": 0.1}, {"alpha_base": 0.0}, {"algorithm": "fixmatch"}):
        result, s = _redraw(explorer, **knobs)
        seconds.append(s)
    assert set(result.confidences["head"]) == {"main"}  # FixMatch has no aux head
    assert max(seconds) <= 2.0, f"slider changes took {[round(s, 2) for s in seconds]} CPU s"


def test_bad_knob_is_one_line():
    explorer = BiasExplorer(steps=10, sets=SETS)
    with pytest.raises(UserError, match=r"smoothing=1.5 is not valid; valid: a number in \[0.0, 0.99\]"):
        explorer.config(smoothing=1.5)
    with pytest.raises(UserError, match="unknown knob 'lamda'"):
        explorer.config(lamda=0.5)


def test_widget_redraw_replaces_the_picture_with_the_new_settings():
    """A control change retrains and replaces the one picture (no appended, stale plot); sliders act on release;
    the long-tail ratio is a control and makes the labeled split long-tailed."""
    explorer = BiasExplorer(steps=10, sets=SETS)
    explorer.widget()
    c, image, status = explorer.controls, explorer.image, explorer.status
    assert set(c) == {"algorithm", "labels_per_class", "long_tail_ratio", "zeta", "smoothing", "alpha_base", "gamma"}
    assert all(not w.continuous_update for k, w in c.items() if k != "algorithm")
    first = image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "lambda=0.5" in status.value
    c["smoothing"].value = 0.0
    assert image.value != first and "lambda=0" in status.value and "CPU-s" in status.value
    c["long_tail_ratio"].value = 10.0
    assert "long-tail ratio=10" in status.value
    exp = next(reversed(explorer._experiments.values()))
    labeled = pd.Series(exp.split_view.targets[exp.split.labeled]).value_counts()
    assert labeled.max() == 4 and labeled.min() == 1  # N_1 = 4 labels, the tail class 4 / 10 -> at least 1
    with pytest.raises(UserError, match=r"long_tail_ratio=0.5 is not valid; valid: a number in \[1, 1000\]"):
        explorer.config(long_tail_ratio=0.5)
