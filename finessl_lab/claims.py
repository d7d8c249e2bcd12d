"""The claims report: every claim of the paper next to our number, with a verdict computed from data.

Inputs (all tidy CSV):

- ``data/paper_results.csv``: every number the paper review gives (id, figure_table, setting, method, metric,
  value, source sentence);
- ``data/paper_claims.csv``: each claim as a checkable statement: on ``metric`` (and ``setting`` if given), our
  value is ``mean(lhs)`` or, with an ``rhs``, ``mean(lhs) - mean(rhs)`` (means over seeds); the claim holds when
  ``ours <op> threshold``. ``paper_ref`` points at the paper's number for it; ``embedded`` says whether the offline
  profile has an honest counterpart;
- the ``*_measures.csv`` files the notebooks write (figure_table, setting, method, metric, seed, value).

Verdicts: ``holds``, ``does not hold``, ``not run offline`` (no measure, and no offline counterpart exists under
the embedded profile) or ``not run`` (no measure although the profile could make one: a notebook failed or was
skipped with ``--only``). Nothing is hard-coded: change a number in a measures file and the verdict follows.
"""
from __future__ import annotations

import math
import operator
from pathlib import Path

import pandas as pd

from . import io
from .errors import UserError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MEASURE_COLUMNS = ["figure_table", "setting", "method", "metric", "seed", "value"]
OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le, "==": operator.eq}
HOLDS, FAILS, OFFLINE, NOT_RUN = "holds", "does not hold", "not run offline", "not run"


def paper_results(path: str | Path | None = None) -> pd.DataFrame:
    return pd.read_csv(Path(path) if path else DATA_DIR / "paper_results.csv")


def paper_claims(path: str | Path | None = None) -> pd.DataFrame:
    claims = pd.read_csv(Path(path) if path else DATA_DIR / "paper_claims.csv", dtype=str, keep_default_na=False)
    bad = sorted(set(claims["op"]) - set(OPS))
    if bad:
        raise UserError(f"paper_claims.csv: unknown op {bad}; valid: {', '.join(OPS)}")
    return claims


def measures_frame(rows: list[dict]) -> pd.DataFrame:
    """A measures table with the standard columns (what the notebooks write)."""
    frame = pd.DataFrame(rows, columns=MEASURE_COLUMNS)
    frame["value"] = frame["value"].astype(float)
    return frame


def load_measures(out_dir: str | Path) -> pd.DataFrame:
    files = sorted(Path(out_dir).glob("*_measures.csv"))
    if not files:
        return measures_frame([])
    frame = pd.concat([pd.read_csv(f, dtype={"setting": str, "method": str}, keep_default_na=False) for f in files],
                      ignore_index=True)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def _mean(measures: pd.DataFrame, metric: str, setting: str, method: str) -> tuple[float, int]:
    sel = measures[(measures["metric"] == metric) & (measures["method"] == method)]
    if setting:
        sel = sel[sel["setting"].astype(str) == setting]
    values = sel["value"].dropna()
    return (float(values.mean()), len(values)) if len(values) else (math.nan, 0)


def evaluate(claims: pd.DataFrame, measures: pd.DataFrame, paper: pd.DataFrame, profile: str = "embedded") -> pd.DataFrame:
    """One row per claim: the paper's number, ours, the verdict and a sentence saying it with the numbers."""
    paper_by_id = paper.set_index("id")
    rows = []
    for c in claims.itertuples(index=False):
        lhs, n_l = _mean(measures, c.metric, c.setting, c.lhs)
        rhs, n_r = _mean(measures, c.metric, c.setting, c.rhs) if c.rhs else (0.0, 1)
        paper_value = float(paper_by_id.loc[c.paper_ref, "value"]) if c.paper_ref else math.nan
        if n_l and n_r:
            ours = lhs - rhs
            verdict = HOLDS if OPS[c.op](round(ours, 10), float(c.threshold)) else FAILS
            what = f"{c.lhs} - {c.rhs} = {lhs:.4g} - {rhs:.4g} = {ours:+.4g}" if c.rhs else f"{c.lhs} = {ours:.4g}"
            sentence = f"{c.statement}: {c.metric} {what} (needs {c.op} {c.threshold}) - {verdict}"
        else:
            ours = math.nan
            verdict = OFFLINE if (profile == "embedded" and c.embedded != "yes") else NOT_RUN
            sentence = f"{c.statement}: {verdict}"
        rows.append({"claim_id": c.claim_id, "figure_table": c.figure_table, "notebook": c.notebook,
                     "statement": c.statement, "metric": c.metric, "setting": c.setting, "comparison":
                     f"{c.lhs}{' - ' + c.rhs if c.rhs else ''} {c.op} {c.threshold}", "paper": paper_value,
                     "ours": ours, "lhs": lhs if n_l else math.nan, "rhs": rhs if (c.rhs and n_r) else math.nan,
                     "verdict": verdict, "sentence": sentence})
    return pd.DataFrame(rows)


def claim_sentences(notebook: str, measures: pd.DataFrame, profile: str = "embedded") -> list[str]:
    """The verdict sentences of one notebook's claims, from its measures (what a notebook prints)."""
    claims = paper_claims()
    claims = claims[claims["notebook"] == notebook]
    return list(evaluate(claims, measures, paper_results(), profile)["sentence"])


def cell_table(measures: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Paper vs ours per table cell (same figure_table, setting, method and metric): the paper profile's table."""
    ours = (measures.groupby(["figure_table", "setting", "method", "metric"], as_index=False)["value"].mean()
            .rename(columns={"value": "ours"}))
    cells = paper.rename(columns={"value": "paper"}).merge(ours, on=["figure_table", "setting", "method", "metric"])
    cells["difference"] = cells["ours"] - cells["paper"]
    return cells[["figure_table", "setting", "method", "metric", "paper", "ours", "difference"]]


def _fmt(x) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


def write_report(out_dir: str | Path, profile: str = "embedded", note: str = "",
                 claims_path: str | Path | None = None, results_path: str | Path | None = None) -> pd.DataFrame:
    """Write ``REPORT.md``, ``claims_report.csv`` and ``cells_report.csv`` into ``out_dir``; return the claims table."""
    out = Path(out_dir)
    paper = paper_results(results_path)
    measures = load_measures(out)
    table = evaluate(paper_claims(claims_path), measures, paper, profile)
    cells = cell_table(measures, paper)
    io.write_csv(out / "claims_report.csv", table)
    io.write_csv(out / "cells_report.csv", cells)
    counts = table["verdict"].value_counts()
    lines = [f"# Claims report ({profile} profile)", ""]
    if note:
        lines += [note, ""]
    lines += ["Generated by `finessl-lab reproduce` from `data/paper_claims.csv`, `data/paper_results.csv` and the "
              "notebooks' `*_measures.csv`; nothing in it is typed by hand.", "",
              "Summary: " + ", ".join(f"{k}: {v}" for k, v in counts.items()), "",
              "| claim | figure/table | statement | comparison | paper | ours | verdict |",
              "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.claim_id} | {r.figure_table} | {r.statement} | {r.metric}: {r.comparison} | "
                     f"{_fmt(r.paper)} | {_fmt(r.ours)} | **{r.verdict}** |")
    lines += ["", "## Table cells: paper vs ours", ""]
    if len(cells):
        lines += ["| figure/table | setting | method | metric | paper | ours | difference |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.figure_table} | {r.setting} | {r.method} | {r.metric} | {_fmt(r.paper)} | {_fmt(r.ours)} | "
                  f"{r.difference:+.2f} |" for r in cells.itertuples(index=False)]
    else:
        lines.append("No cell of the paper's tables was run under this profile (the embedded profile runs offline "
                     "counterparts on other data and another backbone; compare directions, not numbers).")
    io.write_text(out / "REPORT.md", "\n".join(lines) + "\n")
    return table
