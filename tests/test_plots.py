"""Every plot function on a short run: a Figure with the expected axes, non-empty artists, title and note."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import finessl_lab as fl  # noqa: E402
from finessl_lab import plots  # noqa: E402
from finessl_lab.diagnostics import frames as F  # noqa: E402
from finessl_lab.diagnostics import metrics as M  # noqa: E402
from finessl_lab.errors import UserError  # noqa: E402

SMALL = ["data.subsample_per_class=20", "run.epochs=2", "run.steps_per_epoch=10", "run.progress=false",
         "data.num_workers=0", "run.record=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINESSL_LAB_CACHE", str(tmp_path_factory.getbasetemp() / "finessl_cache"))
        for alg in ("fixmatch", "finessl"):
            for seed in (1, 2):
                fl.train(fl.resolve("embedded", sets=SMALL + [f"algorithm.name={alg}", f"run.seed={seed}"]),
                         root / alg / f"seed{seed}")
        yield [fl.load_run(d) for d in sorted(root.glob("*/seed*"))]


def _check(fig, n_axes, note_part="efficientnet_lite0"):
    assert isinstance(fig, plt.Figure)
    axes = [a for a in fig.axes if a.axison]
    assert len(axes) == n_axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert ax.lines or ax.patches or ax.collections  # something is drawn
    assert fig._suptitle is not None and fig._suptitle.get_text()
    assert any(note_part in t.get_text() for t in fig.texts)  # the backbone / dataset footnote
    plt.close(fig)


def test_pseudo_label_counts_without_oracle_labels_and_with_ood_samples(monkeypatch):
    """Semi-Aves' unlabeled set has no labels (y_true = -1): counts still work, true_count is <NA>; open-set OOD
    samples (a class the model does not have) are not counted as any class."""
    from types import SimpleNamespace

    class Fake:
        label, note = "fixmatch", "tiny"
        config = SimpleNamespace(run=SimpleNamespace(seed=1), data=SimpleNamespace(labels_per_class=4))
        experiment = SimpleNamespace(num_classes=3)

        def __init__(self, y_true):
            self.y_true = y_true

        def predict(self, split, head, view=None):
            return pd.DataFrame({"pred": [0, 0, 2, 1], "y_true": self.y_true})

    monkeypatch.setattr(F, "_runs", lambda runs: runs)
    unknown = F.pseudo_label_counts([Fake([-1, -1, -1, -1])])
    assert unknown["count"].tolist() == [2, 1, 1] and unknown["true_count"].isna().all()
    mixed = F.pseudo_label_counts([Fake([0, 2, 2, 7])])  # 7: an OOD sample of the open-set setting
    assert mixed["true_count"].tolist() == [1, 0, 2] and mixed["fraction"].tolist() == [0.5, 0.25, 0.25]


def test_pseudo_label_distribution(runs):
    frame = F.pseudo_label_counts(runs)
    assert set(frame.columns) >= {"method", "seed", "class", "count", "note"}
    fig = plots.pseudo_label_distribution(frame)
    _check(fig, 1)
    # also from a recorded class_distribution table, with a hand-written note
    rec = pd.concat([r.records("class_distribution").assign(method=r.label) for r in runs])
    fig = plots.pseudo_label_distribution(rec, note="my note")
    assert any(t.get_text() == "my note" for t in fig.texts)
    plt.close(fig)


def test_confidence_histograms_and_reliability(runs):
    frame = F.confidence_frame(runs)
    assert set(frame["status"]) <= {"correct", "wrong", "ood"}
    assert set(frame[frame.method == "fixmatch"]["head"]) == {"main"}
    _check(plots.confidence_histograms(frame), 3)  # finessl main + aux, fixmatch main
    run = [r for r in runs if r.label == "finessl"][0]
    test = pd.concat([run.predict("test").assign(head=h) if h == "main" else run.predict("test", "aux").assign(head=h)
                      for h in ("main", "aux")])
    fig = plots.reliability_diagram(test)
    _check(fig, 2)
    ece = M.expected_calibration_error(test[test["head"] == "main"].confidence, test[test["head"] == "main"].correct)
    assert f"{100 * ece:.2f}%" in fig._suptitle.get_text()
    table = M.reliability_table(run.predict("test").confidence, run.predict("test").correct)
    fig = plots.reliability_diagram(table, note=run.note)
    assert f"ECE = {100 * ece:.2f}%" in fig._suptitle.get_text()
    plt.close(fig)


def test_curves_class_accuracy_bars_sensitivity_and_labels(runs):
    _check(plots.training_curves(F.training_frame(runs)), 2)
    _check(plots.confidence_vs_class_accuracy(F.class_accuracy_frame(runs)), 1)
    summary = F.summary_frame(runs)
    _check(plots.accuracy_bars(summary), 1)
    _check(plots.sensitivity(summary.assign(threshold=[0.7, 0.8, 0.7, 0.8]), "threshold", "test_top1"), 1)
    two_budgets = pd.concat([summary, summary.assign(labels_per_class=8, confidence=summary.confidence + 0.05)])
    _check(plots.confidence_vs_labels(two_budgets), 1)


def test_plot_input_errors():
    with pytest.raises(UserError, match="lacks column"):
        plots.accuracy_bars(pd.DataFrame({"method": ["a"]}))
    with pytest.raises(UserError, match="DataFrame"):
        plots.training_curves([1, 2])
    with pytest.raises(UserError, match="unknown status"):
        plots.confidence_histograms(pd.DataFrame({"head": ["main"], "confidence": [0.5], "status": ["maybe"]}))


def test_accuracy_bars_labels_clear_error_bars_and_legend_outside():
    # two methods x two settings, 3 seeds: means 50 / 60 / 70 / 80, sample std 10 (a bar's error bar spans +-10)
    rows = [{"setting": s, "method": m, "seed": k, "test_top1": base + d}
            for s, m, base in (("n1", "a", 50), ("n1", "b", 60), ("n2", "a", 70), ("n2", "b", 80))
            for k, d in enumerate((-10, 0, 10))]
    fig = plots.accuracy_bars(pd.DataFrame(rows), x="setting", hue="method", note="fixture")
    ax = fig.axes[0]
    labels = {float(t.get_text()): t.get_position()[1] for t in ax.texts}
    assert sorted(labels) == [50.0, 60.0, 70.0, 80.0]
    for mean, y in labels.items():  # above mean + std (the error bar's top), not on it
        assert mean + 10 < y < mean + 13
    assert ax.get_ylim()[1] > max(labels.values())
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, not over the bars
    plt.close(fig)
