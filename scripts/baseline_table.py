"""Summarise `finessl-lab compare` output directories: last-epoch test top-1 (mean, std over seeds) and the
last-epoch pseudo-label columns of metrics.csv (pl_acc, pl_acc_masked, pl_mask_ratio, pl_entropy; means).

    python scripts/baseline_table.py runs/n1 runs/n4 runs/n25
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ORDER = "supervised pseudolabel fixmatch flexmatch freematch softmatch debiaspl finessl fpl ifpl grip ulfine".split()
PL = ["pl_acc", "pl_acc_masked", "pl_mask_ratio", "pl_entropy"]


def table(dirs: list[str]) -> pd.DataFrame:
    rows = []
    for d in dirs:
        for m in sorted(Path(d).glob("*/seed*/metrics.csv")):
            last = pd.read_csv(m).iloc[-1]
            rows.append({"out": d, "algorithm": m.parts[-3], "seed": m.parts[-2], "test_top1": last["test_top1"],
                         **{c: last.get(c) for c in PL}})
    df = pd.DataFrame(rows)
    agg = {"test_mean": ("test_top1", "mean"), "test_std": ("test_top1", "std"), "runs": ("test_top1", "size"),
           **{c: (c, "mean") for c in PL}}
    g = df.groupby(["out", "algorithm"]).agg(**agg).reset_index()
    rank = {a: i for i, a in enumerate(ORDER)}
    return g.sort_values(["out", "algorithm"], key=lambda s: s.map(rank).fillna(99) if s.name == "algorithm" else s)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="compare --out directories")
    pd.set_option("display.width", 200)
    print(table(p.parse_args().dirs).round(2).to_string(index=False))
