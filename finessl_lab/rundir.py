"""The layout of a run directory and the one check that a new run may go there (shared by the CLI and the API;
only the names of the options in the messages differ)."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

CHECKPOINT, METRICS, SUMMARY, CONFIG = "checkpoint.pt", "metrics.csv", "summary.json", "config.yaml"
RUN_FILES = (CONFIG, CHECKPOINT, METRICS, SUMMARY)
API_NAMES = ("out_dir", "overwrite=True", "resume=True")


def held_run_files(out: str | Path) -> list[str]:
    """The run files (config.yaml, checkpoint.pt, metrics.csv, summary.json) present in ``out``."""
    return [f for f in RUN_FILES if (Path(out) / f).exists()]


def check_new_run_dir(out: str | Path, overwrite: bool, names: tuple[str, str, str] = API_NAMES) -> None:
    """Refuse a directory that is a file or already holds a run, unless ``overwrite`` (the old files are removed
    only once the new run has been validated and starts, see Trainer.fit). ``names`` = how the message calls the
    output directory, the overwrite option and the resume option."""
    out_name, overwrite_name, resume_name = names
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out_name} {str(out)!r} is a file; valid: a new or empty directory")
    held = held_run_files(out)
    if not held or overwrite:
        return
    if held == [CONFIG]:
        raise UserError(f"{out_name} {str(out)!r} holds a run that stopped before its first checkpoint (config.yaml "
                        f"only); valid: a new directory, or {overwrite_name} to start it again")
    resume = f", or {resume_name} to continue it" if CHECKPOINT in held else ""
    raise UserError(f"{out_name} {str(out)!r} already holds a run ({', '.join(held)}); valid: a new directory, "
                    f"{overwrite_name} to replace it{resume}")
