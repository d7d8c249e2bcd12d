"""A run store shared by every notebook: runs are keyed by a hash of the resolved config.

``RunStore(root).get(cfg)`` returns the directory of the run of ``cfg``:

- a finished run (``summary.json``) of the same config is reused as is;
- an unfinished one (``checkpoint.pt``) is resumed from its checkpoint;
- a missing one (or one that stopped before its first checkpoint) is trained.

The key is a SHA-256 of the config with the keys that change no result removed (:data:`IGNORED`, the same list
the trainer lets differ on resume: progress bars, device, cache/data locations, eval batch size, checkpoint
frequency, NaN policy). Anything else, a seed, a flag of an ablation, the number of steps, gives another key and
so another run. Before a stored run is reused or resumed its own ``config.yaml`` is compared key by key with the
requested config; any difference outside :data:`IGNORED` is refused with a one-line error (a hash collision, a
hand-edited directory) rather than silently returning a run of another config.

So Table 1, Fig. 2 and Fig. 3 share the same FineSSL runs, and an interrupted batch continues where it stopped.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import Config, describe_diff, diff, iter_leaves, validate
from .errors import UserError, check_type
from .progress import progress_bar
from .rundir import CHECKPOINT, CONFIG, SUMMARY
from .trainer import RESUME_IGNORED

#: config keys that change no result: not part of the key, allowed to differ when a run is reused or resumed
IGNORED: tuple[str, ...] = tuple(RESUME_IGNORED)
KEY_VERSION = 1  # bump when the meaning of a config changes without its keys changing


def config_key(cfg: Config) -> str:
    """20 hex digits of the SHA-256 of every result-relevant config value (sorted ``key=value`` lines)."""
    validate(cfg)
    lines = [f"v={KEY_VERSION}"] + sorted(f"{k}={v!r}" for k, v, _ in iter_leaves(cfg) if not k.startswith(IGNORED))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class StoredRun:
    """Where a run lives and what the store did to get it: 'reused', 'resumed' or 'trained'."""
    config: Config
    path: Path
    action: str

    @property
    def summary(self) -> dict:
        return json.loads((self.path / SUMMARY).read_text())

    @property
    def metrics(self):
        import pandas as pd

        return pd.read_csv(self.path / "metrics.csv")


class RunStore:
    """Runs under ``root/<algorithm>-s<seed>-<key>/``; see the module docstring for reuse/resume/train."""

    def __init__(self, root: str | os.PathLike):
        check_type("runs_dir", root, (str, os.PathLike), "a directory path")
        if isinstance(root, str) and not root.strip():
            raise UserError("runs_dir='' is empty; valid: a directory path such as 'runs/store'")
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"runs_dir {str(self.root)!r} is a file; valid: a directory")

    def path(self, cfg: Config) -> Path:
        return self.root / f"{cfg.algorithm.name}-s{cfg.run.seed}-{config_key(cfg)}"

    def status(self, cfg: Config) -> str:
        """'finished', 'unfinished' or 'missing' for the run of ``cfg`` (a different stored config is an error)."""
        d = self.path(cfg)
        if (d / SUMMARY).is_file() or (d / CHECKPOINT).is_file():
            self._check_same(d, cfg)
            return "finished" if (d / SUMMARY).is_file() else "unfinished"
        return "missing"

    def _check_same(self, d: Path, cfg: Config) -> None:
        if not (d / CONFIG).is_file():
            raise UserError(f"stored run {str(d)!r} has no config.yaml; delete the directory to train it again")
        stored = Config()
        from .config import apply_dict

        try:
            apply_dict(stored, yaml.safe_load((d / CONFIG).read_text()) or {})
        except UserError as e:
            raise UserError(f"stored run {str(d)!r} holds a config this version cannot read ({e}); delete the "
                            "directory to train it again") from None
        changed = diff(stored, cfg, ignore=IGNORED)
        if changed:
            raise UserError(f"stored run {str(d)!r} was trained with a different config "
                            f"({describe_diff(stored, cfg, changed)}); refusing to reuse it; delete the directory "
                            "to train it again")

    def get(self, cfg: Config, progress: bool | None = None, wait_s: float = 1800.0) -> StoredRun:
        """The run of ``cfg``: reused if finished, resumed if unfinished, trained if missing. If another process is
        training it right now (its directory is locked), wait for it (up to ``wait_s``) and reuse its result."""
        from .io import DirectoryBusy

        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._get(cfg, progress)
            except DirectoryBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _get(self, cfg: Config, progress: bool | None) -> StoredRun:
        from .trainer import train

        cfg = copy.deepcopy(cfg)
        validate(cfg)
        d = self.path(cfg)
        state = self.status(cfg)
        if state == "finished":
            return StoredRun(cfg, d, "reused")
        d.parent.mkdir(parents=True, exist_ok=True)
        if state == "unfinished":
            train(cfg, d, resume=True, progress=progress)
            return StoredRun(cfg, d, "resumed")
        train(cfg, d, progress=progress, overwrite=(d / CONFIG).exists())
        return StoredRun(cfg, d, "trained")

    def get_many(self, cfgs: list[Config], progress: bool = True, desc: str = "runs") -> list[StoredRun]:
        """:meth:`get` for several configs, with one progress bar over them (every config validated first)."""
        check_type("cfgs", cfgs, (list, tuple), "a list of Config objects")
        for c in cfgs:
            validate(c)
            self.status(c)  # a conflicting stored run fails before anything trains
        out = []
        bar = progress_bar(cfgs, desc=desc, unit="run", disable=not progress, leave=False)
        for c in bar:
            out.append(self.get(c, progress=False))
        return out

    def describe(self, cfg: Config) -> str:
        return yaml.safe_dump({"path": str(self.path(cfg)), "status": self.status(cfg)}, sort_keys=False)
