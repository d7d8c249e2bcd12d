"""``finessl-lab reproduce``: run the paper's notebooks with papermill, then write the claims report.

Each notebook in ``notebooks/`` (one per figure / table, plus ``explore_bias``) is executed with the profile's
parameters; runs are shared through the run store (``--runs-dir``), so an interrupted batch continues where it
stopped and notebooks reuse each other's runs. A failing notebook is reported with its name and failing cell;
the others still run and the exit status is non-zero. Executed notebooks go to ``<out>/executed/``.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .claims import write_report
from .errors import UserError, suggest
from .paper import EMBEDDED_NOTE, PROFILES, QUICK
from .progress import progress_bar

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: the feature caches the embedded notebooks read, by notebook prefix (the rest read the MNIST-5k cache of the
#: ``embedded`` preset; tables 2-4, 8 and 11 show the paper's numbers only): built once, up front, with all the
#: cores, before any notebook kernel starts
EMBEDDED_CACHES = {"fig6": ("embedded_fashion5k_n4",), **{k: () for k in ("table2", "table3", "table4", "table8",
                                                                         "table11")},
                   **{k: ("embedded", "embedded_n4_bn") for k in ("fig1", "table5", "table6", "table7", "table10")}}


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    error: str = ""


def notebooks(directory: str | Path = NOTEBOOK_DIR) -> dict[str, Path]:
    """Every runnable notebook, by name (file stem), figures before tables, explore_bias last."""
    found = {p.stem: p for p in sorted(Path(directory).glob("*.ipynb"))}

    def order(name: str):
        m = re.match(r"(fig|table)(\d+)", name)
        return (0 if name.startswith("fig") else 1, int(m.group(2)), name) if m else (2, 0, name)

    return {k: found[k] for k in sorted(found, key=order)}


def select(available: dict[str, Path], only: str | list[str] | None) -> dict[str, Path]:
    """``--only fig2,table6``: a name selects every notebook named exactly so or starting with ``name_``."""
    if not only:
        return available
    wanted = [w.strip() for w in (only.split(",") if isinstance(only, str) else only) if w.strip()]
    chosen = {}
    for w in wanted:
        hits = {k: v for k, v in available.items() if k == w or k.startswith(w + "_")}
        if not hits:
            short = sorted({k.split("_")[0] for k in available})
            raise UserError(f"--only {w!r} matches no notebook{suggest(w, short)}; valid: {', '.join(short)} "
                            f"(or full names such as {next(iter(available), 'fig2_pseudo_label_bias')})")
        chosen.update(hits)
    return {k: available[k] for k in available if k in chosen}


def parameters_for(profile: str, quick: bool, runs_dir: str, out: str) -> dict:
    params = {"profile": profile, "runs_dir": str(runs_dir), "out_dir": str(out)}
    if quick:
        params.update(QUICK)
    return params


def _failure(exc: BaseException) -> str:
    """'cell N: ErrorName: message' from a papermill error (one line)."""
    cell = getattr(exc, "exec_count", None) or getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {cell}: " if cell is not None else ""
    return where + " ".join(f"{ename}: {evalue}".split())[:400]


def _title(path: Path) -> str:
    import nbformat

    first = nbformat.read(path, as_version=4).cells[0].source.splitlines()[0]
    return first.lstrip("# ").strip()


def write_gallery(out: str | Path, notebook_dir: str | Path = NOTEBOOK_DIR, header: str = "") -> Path:
    """``<out>/README.md``: one line per figure file (PNG) with the title of the notebook that drew it."""
    from . import io

    out = Path(out)
    books = notebooks(notebook_dir)
    lines = ["# figures/", "", header or "Figures drawn by `finessl-lab reproduce` (see REPORT.md for the claims).", "",
             "Each figure has an SVG twin and the tidy CSV behind it; `*_measures.csv` feed the claims report.", ""]
    for png in sorted(out.glob("*.png")):
        stem = png.stem
        key = re.match(r"(fig\d+|table\d+|explore_bias)", stem)
        book = next((n for n in books if key and (n == key.group(1) or n.startswith(key.group(1) + "_"))), None)
        title = _title(books[book]) if book else ""
        lines.append(f"- [`{png.name}`]({png.name}) - {title}" + (f" (`notebooks/{book}.ipynb`)" if book else ""))
    return io.write_text(out / "README.md", "\n".join(lines) + "\n")


def caches_for(names, profile: str) -> list[str]:
    """The presets whose feature caches the selected notebooks read (embedded profile; none for ``paper``)."""
    if profile != "embedded":
        return []
    wanted = [EMBEDDED_CACHES.get(re.match(r"[a-z]+\d*", n).group(0), ("embedded",)) for n in names]
    return list(dict.fromkeys(p for group in wanted for p in group))


def prebuild_caches(presets: list[str], progress: bool = True) -> list[tuple[str, str, float]]:
    """Build (or find) each preset's feature cache in this process, one after the other with all the cores (the
    build's own DataLoader worker plan), so no notebook kernel builds one on a single thread while another kernel
    waits for it. Returns (preset, cache file, seconds) per preset."""
    from .build import build_experiment
    from .data.features import forget_loaded
    from .presets import resolve

    done = []
    for name in presets:
        cfg = resolve(name)
        cfg.run.progress = progress
        t0 = time.perf_counter()
        exp = build_experiment(cfg.validate(), progress=progress)
        done.append((name, str(exp.feature_path), time.perf_counter() - t0))
        del exp
    forget_loaded()  # the kernels read the files themselves; the parent need not hold ~350 MB while they run
    return done


def run_notebook(path: Path, out_path: Path, params: dict) -> None:
    import papermill as pm

    if "interactive" in pm.inspect_notebook(str(path)):  # widgets degrade to one static run
        params = {**params, "interactive": False}
    pm.execute_notebook(str(path), str(out_path), parameters=params, progress_bar=False, kernel_name="python3",
                        cwd=str(path.parent.parent), log_output=False)


def reproduce(profile: str = "embedded", only=None, runs_dir: str | Path = "runs/store", out: str | Path = "figures",
              quick: bool = False, notebook_dir: str | Path = NOTEBOOK_DIR, progress: bool = True,
              jobs: int = 1, prebuild: bool = True) -> list[Outcome]:
    """Execute the selected notebooks (``jobs`` at a time); write the report; return one Outcome per notebook.

    Notebooks that need the same run share it through the store: one trains it, the other waits and reuses it.
    ``prebuild``: first build the feature caches the selected notebooks read (:func:`prebuild_caches`)."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= 64:
        raise UserError(f"--jobs {jobs!r} is not valid; valid: an integer from 1 to 64")
    if profile not in PROFILES:
        raise UserError(f"--profile {profile!r} is not valid; valid: {', '.join(PROFILES)}")
    selected = select(notebooks(notebook_dir), only)
    if not selected:
        raise UserError(f"no notebooks in {str(notebook_dir)!r}; valid: a directory of .ipynb files")
    out = Path(out).resolve()
    runs_dir = Path(runs_dir).resolve()
    executed = out / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    params = parameters_for(profile, quick, str(runs_dir), str(out))
    if prebuild:
        for name, path, seconds in prebuild_caches(caches_for(selected, profile), progress):
            if progress:
                print(f"feature cache of {name}: {path} ({seconds:.0f} s)", flush=True)
    bar = progress_bar(total=len(selected), desc="notebooks", unit="nb", disable=not progress, leave=True)

    def one(item) -> Outcome:
        name, path = item
        t0 = time.perf_counter()
        try:
            run_notebook(path, executed / path.name, params)
            return Outcome(name, True, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001  (reported by name; the other notebooks still run)
            return Outcome(name, False, time.perf_counter() - t0, _failure(exc))

    done: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for outcome in pool.map(one, selected.items()) if jobs == 1 else \
                (f.result() for f in as_completed([pool.submit(one, item) for item in selected.items()])):
            done[outcome.name] = outcome
            bar.set_postfix_str(outcome.name)
            bar.update(1)
            if not outcome.ok:
                bar.write(f"FAILED {outcome.name}: {outcome.error}")
    outcomes = [done[name] for name in selected]
    bar.close()
    note = (f"{EMBEDDED_NOTE}." if profile == "embedded" else "") + (" Quick run: 1 seed, 300 steps." if quick else "")
    write_report(out, profile, note=note.strip())
    write_gallery(out, notebook_dir, f"Figures of `finessl-lab reproduce --profile {profile}{' --quick' if quick else ''}`; "
                  + (f"{EMBEDDED_NOTE}. " if profile == "embedded" else "") + "Claims: REPORT.md.")
    return outcomes
