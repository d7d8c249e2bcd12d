"""Atomic file writes: write to a temporary file in the same directory, fsync, rename.

A reader never sees half a file: either the old content or the new. Checkpoints additionally carry a SHA-256
of their payload, verified on load.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

_CKPT_MAGIC = b"FINESSL-LAB-CKPT v1\n"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))


def torch_save_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(path, obj) -> Path:
    """torch.save ``obj`` with a magic header and a SHA-256 of the payload, atomically."""
    payload = torch_save_bytes(obj)
    digest = hashlib.sha256(payload).hexdigest().encode()
    return write_bytes(path, _CKPT_MAGIC + digest + b"\n" + payload)


def load_checkpoint(path, map_location="cpu"):
    """Load a file written by :func:`save_checkpoint`; a missing, foreign, truncated or corrupted file is a UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist; expected a checkpoint.pt written by finessl-lab train")
    raw = path.read_bytes()
    if not raw.startswith(_CKPT_MAGIC):
        raise UserError(f"{str(path)!r} is not a finessl-lab checkpoint (bad header); expected a checkpoint.pt written by finessl-lab train")
    rest = raw[len(_CKPT_MAGIC):]
    digest, _, payload = rest.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise UserError(f"checkpoint {str(path)!r} is corrupted or truncated (SHA-256 mismatch); resume from an intact checkpoint or start again")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir(configured: str = "") -> Path:
    """The cache root: the configured one, else $FINESSL_LAB_CACHE, else ~/.cache/finessl_lab. Never inside the package."""
    root = configured or os.environ.get("FINESSL_LAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "finessl_lab")
    return Path(root)
