"""Notebooks: generated from scripts/make_notebooks.py, each with a papermill parameters cell; the batch runner
reports a failing notebook by name and cell and still runs the others; a bad parameter is a one-line error."""
import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pandas as pd
import pytest

from finessl_lab.cli import main
from finessl_lab.errors import UserError
from finessl_lab.reproduce import notebooks, reproduce, select

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"profile", "seeds", "epochs", "steps", "runs_dir", "out_dir", "sets"}


def test_committed_notebooks_are_the_generated_ones(tmp_path):
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    generated = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert generated == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for name in generated:
        assert json.loads((tmp_path / name).read_text()) == json.loads((ROOT / "notebooks" / name).read_text()), name


def test_every_figure_and_table_has_a_notebook_with_parameters():
    found = notebooks()
    for key in [f"fig{i}" for i in range(1, 9)] + [f"table{i}" for i in range(1, 13)]:
        assert select(found, key), key
    for name, path in found.items():
        assert COMMON <= set(pm.inspect_notebook(str(path))), name
        tags = [c.metadata.get("tags", []) for c in nbformat.read(path, as_version=4).cells]
        assert sum("parameters" in t for t in tags) == 1, name


def test_only_selects_by_prefix_and_rejects_unknown_names():
    found = notebooks()
    assert list(select(found, "table1")) == ["table1_main_results"]
    assert set(select(found, "fig4,table6")) == {"fig4_confidence_separation", "table6_ablations"}
    with pytest.raises(UserError, match="--only 'tabel6' matches no notebook"):
        select(found, "tabel6")


def test_failing_notebook_is_reported_by_name_and_cell_and_the_others_run(tmp_path, capsys):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    shutil.copy(ROOT / "notebooks" / "table8_default_config.ipynb", nbdir)
    bad = nbformat.read(ROOT / "notebooks" / "table8_default_config.ipynb", as_version=4)
    setup = next(i for i, c in enumerate(bad.cells) if "paper.parameters(" in c.source)
    bad.cells[setup].source = bad.cells[setup].source.replace("seeds=seeds", "seeds='one'")
    nbformat.write(bad, nbdir / "table2_bad.ipynb")
    outcomes = {o.name: o for o in reproduce("embedded", None, tmp_path / "runs", tmp_path / "out", quick=True,
                                             notebook_dir=nbdir, progress=False)}
    assert outcomes["table8_default_config"].ok
    err = outcomes["table2_bad"].error
    assert not outcomes["table2_bad"].ok and "\n" not in err
    assert err.startswith("cell ") and "UserError: parameter seeds='one'" in err
    assert (tmp_path / "out" / "table8_default_config.png").is_file()
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| table8_presets_match |" in report and "**holds**" in report
    assert (tmp_path / "out" / "executed" / "table2_bad.ipynb").is_file()  # kept for inspection


def test_cli_reproduce_rejects_bad_profile(capsys):
    assert main(["reproduce", "--profile", "gpu", "--only", "table8"]) == 2
    assert "--profile 'gpu' is not valid" in capsys.readouterr().err


def test_a_training_notebook_runs_under_papermill_with_quick_sized_parameters(tmp_path):
    """Fig. 4 end to end (store -> load_run -> predict -> plots -> measures -> verdicts) on a tiny budget; CI runs
    every notebook through 'finessl-lab reproduce --quick'."""
    out = tmp_path / "figures"
    pm.execute_notebook(str(ROOT / "notebooks" / "fig4_confidence_separation.ipynb"), str(tmp_path / "fig4.ipynb"),
                        parameters={"seeds": [1], "epochs": 2, "steps": 20, "runs_dir": str(tmp_path / "runs"),
                                    "out_dir": str(out), "sets": ["data.subsample_per_class=20", "data.num_workers=0"]},
                        progress_bar=False, kernel_name="python3", cwd=str(ROOT / "notebooks"))
    assert (out / "fig4_confidence_separation.png").is_file() and (out / "fig4_confidence_separation.svg").is_file()
    measures = pd.read_csv(out / "fig4_confidence_separation_measures.csv")
    assert {"auroc_correct_wrong", "ece_aux"} <= set(measures["metric"])
    ood = pd.read_csv(out / "fig4bcd_openset_confidence_measures.csv")
    assert {"auroc_id_ood", "top1"} == set(ood["metric"]) and set(ood["setting"]) == {"openset"}
    executed = nbformat.read(tmp_path / "fig4.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "auroc_correct_wrong finessl_aux - fixmatch_main =" in printed


TINY_CNN = ["data.subsample_per_class=10", "data.image_size=32", "data.resize=32", "data.crop_padding=4",
            "run.feature_views=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("cnn_runs")


# fig1 and table5 train the from-scratch CNN in image mode (RandAugment on every image of every step): ~3x the CPU
# of the others, so they are slow-marked here; CI's 'reproduce --quick' still executes both notebooks
SCRATCH = pytest.mark.slow


@pytest.mark.parametrize("name, figure, metric", [
    pytest.param("fig1_peft_vs_fft", "fig1_peft_vs_fft", "fig1_cnn_pretrained_beats_scratch", marks=SCRATCH),
    ("table7_resnet_peft", "table7_resnet_peft", "table7_cnn_finessl_beats_debiaspl"),
    ("table10_fft_variants", "table10_fft_variants", "table10_cnn_finessl_beats_fixmatch"),
    ("table6_ablations", "table6_detach", "table6_detach_cnn"),
    pytest.param("table5_training_time", "table5_scratch_vs_frozen", "table5_cnn_scratch_slower", marks=SCRATCH),
])
def test_cnn_strategy_notebooks_run_under_papermill(tmp_path, shared_runs, name, figure, metric):
    """The embedded CNN counterparts (top-2-block PEFT from the partial cache, the from-scratch CNN) end to end on a
    tiny budget: figure + CSV + measures written, and the claim's verdict printed from the data."""
    from finessl_lab import claims

    out = tmp_path / "figures"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                        parameters={"seeds": [1], "epochs": 2, "steps": 20, "peft_steps": 3,
                                    "runs_dir": str(shared_runs), "out_dir": str(out), "sets": TINY_CNN,
                                    **({"label_settings": ["n4"]} if name.startswith("fig1") else {})},
                        progress_bar=False, kernel_name="python3", cwd=str(ROOT / "notebooks"))
    for ext in ("png", "svg", "csv"):
        assert (out / f"{figure}.{ext}").is_file(), ext
    frame = pd.read_csv(out / f"{figure}.csv")
    assert (frame["steps"] == 3).all()
    claim = claims.paper_claims().set_index("claim_id").loc[metric]
    executed = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"{claim.statement}: {claim.metric}" in printed
    assert "- holds" in printed or "- does not hold" in printed


def test_reproduce_builds_the_feature_caches_first_and_only_those_the_notebooks_read(tmp_path, monkeypatch):
    """The caches are built once in the parent (all cores) before any kernel starts; paper-number notebooks need
    none, fig6 reads Fashion-MNIST's, the CNN-strategy notebooks the partial (top-2-block) cache too."""
    from finessl_lab import reproduce as rp

    assert rp.caches_for(["table8_default_config", "table2_semi_aves"], "embedded") == []
    assert rp.caches_for(["fig6_bias_other_datasets"], "embedded") == ["embedded_fashion5k_n4"]
    assert rp.caches_for(["fig2_pseudo_label_bias", "table7_resnet_peft", "fig1_peft_vs_fft"], "embedded") == \
        ["embedded", "embedded_n4_bn"]
    assert rp.caches_for(["fig2_pseudo_label_bias"], "paper") == []
    events = []
    monkeypatch.setattr(rp, "prebuild_caches", lambda presets, progress=True: events.append(("build", presets)) or [])
    monkeypatch.setattr(rp, "run_notebook", lambda path, out, params: events.append(("run", path.stem)))
    monkeypatch.setattr(rp, "write_report", lambda *a, **k: None)
    rp.reproduce("embedded", "fig2,fig6", tmp_path / "runs", tmp_path / "out", quick=True, progress=False, jobs=2)
    assert events[0] == ("build", ["embedded", "embedded_fashion5k_n4"])
    assert sorted(e[1] for e in events[1:]) == ["fig2_pseudo_label_bias", "fig6_bias_other_datasets"]
