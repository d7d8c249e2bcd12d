"""The claims report is computed from data: change a measured number and the verdict changes."""
import pandas as pd
import pytest

from finessl_lab import claims
from finessl_lab.errors import UserError
from finessl_lab.paper import parameters, table8_default_config


def _measures(finessl, no_bms):
    return claims.measures_frame(
        [{"figure_table": "table6", "setting": "n4", "method": "finessl", "metric": "top1", "seed": s, "value": v}
         for s, v in enumerate(finessl)]
        + [{"figure_table": "table6", "setting": "n4", "method": "no_bms", "metric": "top1", "seed": s, "value": v}
           for s, v in enumerate(no_bms)])


def test_paper_data_is_complete_and_consistent():
    results, table = claims.paper_results(), claims.paper_claims()
    assert results["id"].is_unique and table["claim_id"].is_unique
    assert set(table.loc[table["paper_ref"] != "", "paper_ref"]) <= set(results["id"])
    assert {"fig1", "fig8", "table1", "table12"} <= set(table["figure_table"])
    assert (results["source"].str.len() > 10).all()
    # spot checks against the seed's sentences
    row = results[(results["figure_table"] == "table6") & (results["method"] == "finessl-no_bms")].iloc[0]
    assert row["value"] == 3.74 and "−3.74" in row["source"]
    assert results[(results["setting"] == "cifar100_n4") & (results["method"] == "finessl")]["value"].tolist() == [80.44]


def test_verdict_follows_the_numbers(tmp_path):
    table = claims.paper_claims()
    paper = claims.paper_results()
    row = lambda m: claims.evaluate(table, m, paper).set_index("claim_id").loc["table6_bms"]  # noqa: E731
    holds = row(_measures([80.0, 82.0], [79.0, 80.0]))
    assert holds["verdict"] == claims.HOLDS and holds["ours"] == pytest.approx(1.5) and holds["paper"] == 3.74
    assert "81 - 79.5 = +1.5" in holds["sentence"] and holds["sentence"].endswith("holds")
    fails = row(_measures([80.0, 82.0], [81.0, 82.0]))
    assert fails["verdict"] == claims.FAILS and fails["ours"] == pytest.approx(-0.5)

    # the same through files: write measures, report, change one number on disk, report again
    m = _measures([80.0], [79.0])
    m.to_csv(tmp_path / "table6_ablations_measures.csv", index=False)
    report = claims.write_report(tmp_path).set_index("claim_id")
    assert report.loc["table6_bms", "verdict"] == claims.HOLDS
    m.loc[m["method"] == "no_bms", "value"] = 85.0
    m.to_csv(tmp_path / "table6_ablations_measures.csv", index=False)
    report = claims.write_report(tmp_path).set_index("claim_id")
    assert report.loc["table6_bms", "verdict"] == claims.FAILS
    text = (tmp_path / "REPORT.md").read_text()
    assert "| table6_bms |" in text and "**does not hold**" in text
    # claims with no offline counterpart are labelled so under the embedded profile, 'not run' otherwise
    assert report.loc["table3_imagenet", "verdict"] == claims.OFFLINE
    assert report.loc["table1_ssl_beats_supervised", "verdict"] == claims.NOT_RUN
    assert pd.read_csv(tmp_path / "claims_report.csv")["claim_id"].tolist() == list(report.index)


def test_table8_presets_match_the_paper_defaults():
    frame, measures = table8_default_config()
    assert measures["value"].tolist() == [0.0]
    bad = frame[~frame["match"]]
    assert set(zip(bad["preset"], bad["key"])) == {("cifar10_n1", "optim.batch_size"), ("cifar10_n2", "optim.batch_size"),
                                                   ("cifar10_n1", "algorithm.finessl.gamma")}


@pytest.mark.parametrize("kwargs, name", [({"profile": "cpu"}, "profile"), ({"seeds": [1, "2"]}, "seeds"),
                                          ({"seeds": []}, "seeds"), ({"epochs": -1}, "epochs"),
                                          ({"steps": 2.5}, "steps"), ({"runs_dir": ""}, "runs_dir")])
def test_bad_parameter_is_one_line_naming_it(kwargs, name):
    with pytest.raises(UserError, match=f"parameter {name}") as e:
        parameters(**kwargs)
    assert "\n" not in str(e.value)
