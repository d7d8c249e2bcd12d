"""Atomic file writes: write to a temporary file in the same directory, fsync, rename, fsync the directory.

A reader never sees half a file: either the old content or the new, even if the writer is killed (SIGKILL,
power loss) mid-write; at worst a hidden ``.<name>.<random>.tmp`` file is left behind, which
:func:`remove_stale_temps` clears. Checkpoints (and feature caches) additionally carry a SHA-256 and the length
of their payload, verified on load.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import UserError

_CKPT_PREFIX = b"FINESSL-LAB-CKPT v"
_CKPT_MAGIC_V1 = b"FINESSL-LAB-CKPT v1\n"   # v1: magic, sha256 hex, "\n", payload (still readable)
_CKPT_MAGIC = b"FINESSL-LAB-CKPT v2\n"      # v2: magic, sha256 hex, " ", payload length, "\n", payload
CHECKPOINT_HINT = "expected a checkpoint.pt written by finessl-lab train"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temps(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete temp files a killed writer left next to ``names`` in ``directory``; return what was removed.

    Call it only where no other process writes these files (e.g. a run directory under its lock)."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for name in names:
        for p in directory.glob(f".{name}.*.tmp"):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))


def save_figure(fig, path, **savefig_kwargs) -> Path:
    """``fig.savefig`` atomically; the format follows the file suffix (png, pdf, svg, ...)."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or path.suffix.lstrip(".") or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs), binary=True)


def torch_save_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _compact(obj):
    """``obj`` with every tensor that views a larger storage replaced by a copy of just its elements: torch.save
    writes a view's whole storage (a stacked run's parameters are views of the [K, ...] tensors of all K runs).
    dicts (state dicts' ``_metadata`` kept), lists and tuples are walked; anything else is left as it is."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.layout == torch.strided and obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return obj.detach().clone()
        return obj
    if isinstance(obj, dict) and type(obj) in (dict, OrderedDict):
        out = type(obj)((k, _compact(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_compact(v) for v in obj)
    return obj


def save_checkpoint(path, obj) -> Path:
    """torch.save ``obj`` with a magic header, the payload's SHA-256 and length, atomically (views of larger
    tensors saved as their own elements only)."""
    payload = torch_save_bytes(_compact(obj))
    header = _CKPT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b" " + str(len(payload)).encode() + b"\n"
    return write_bytes(path, header + payload)


def load_checkpoint(path, map_location="cpu"):
    """Load a file written by :func:`save_checkpoint`; a missing, foreign, truncated or corrupted file is a UserError."""
    import torch

    path = Path(path)
    shown = repr(str(path))
    if path.is_dir():
        raise UserError(f"checkpoint {shown} is a directory; {CHECKPOINT_HINT}")
    if not path.is_file():
        raise UserError(f"checkpoint {shown} does not exist; {CHECKPOINT_HINT}")
    with open(path, "rb") as f:
        magic = f.read(len(_CKPT_MAGIC))
        if not magic:
            raise UserError(f"checkpoint {shown} is empty (0 bytes); resume from an intact checkpoint or start again")
        if magic not in (_CKPT_MAGIC, _CKPT_MAGIC_V1):
            if len(magic) < len(_CKPT_MAGIC) and (_CKPT_MAGIC.startswith(magic) or _CKPT_MAGIC_V1.startswith(magic)):
                raise UserError(f"checkpoint {shown} is truncated ({len(magic)} bytes, inside its header); "
                                "resume from an intact checkpoint or start again")
            if magic.startswith(_CKPT_PREFIX):
                raise UserError(f"checkpoint {shown} has an unsupported format "
                                f"({magic.strip().decode(errors='replace')}); this finessl-lab reads v1 and v2")
            raise UserError(f"{shown} is not a finessl-lab checkpoint (bad header); {CHECKPOINT_HINT}")
        line = f.readline(256)
        payload = f.read()
    if not line.endswith(b"\n"):
        raise UserError(f"checkpoint {shown} is truncated (inside its header); resume from an intact checkpoint or start again")
    digest, _, length = line.strip().partition(b" ")
    if magic == _CKPT_MAGIC:
        try:
            expected = int(length)
        except ValueError:
            raise UserError(f"checkpoint {shown} is corrupted (bad header); resume from an intact checkpoint or "
                            "start again") from None
        if len(payload) < expected:
            raise UserError(f"checkpoint {shown} is truncated ({len(payload)} of {expected} payload bytes); "
                            "resume from an intact checkpoint or start again")
        if len(payload) > expected:
            raise UserError(f"checkpoint {shown} is corrupted ({len(payload) - expected} unexpected trailing bytes); "
                            "resume from an intact checkpoint or start again")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise UserError(f"checkpoint {shown} is corrupted or truncated (SHA-256 mismatch); resume from an intact "
                        "checkpoint or start again")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001  (checksum fine, but written by an incompatible torch / finessl-lab)
        raise UserError(f"checkpoint {shown} passed its checksum but could not be unpickled "
                        f"({type(e).__name__}: {e}); was it written by another version of torch or finessl-lab?") from None


def is_checkpoint_file(path) -> bool:
    """True if ``path`` starts like a file written by :func:`save_checkpoint`."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_CKPT_PREFIX)) == _CKPT_PREFIX
    except OSError:
        return False


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class DirectoryBusy(UserError):
    pass


@contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "run directory") -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on ``directory`` itself, so two processes can never train into the
    same run directory at once. No lock file is created; the kernel drops the lock when the process dies, even
    on SIGKILL. A no-op where flock is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows)
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"cannot open {what} {str(directory)!r} ({e.strerror}); valid: a directory you can read and "
                        "write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DirectoryBusy(f"{what} {str(directory)!r} is in use by another finessl-lab process; wait for it "
                                "to finish or stop it first (it saves a checkpoint on SIGINT/SIGTERM)") from None
        yield
    finally:
        os.close(fd)


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """``path`` is a directory that exists and is writable, or can be created: else a UserError naming the
    ancestor that blocks it."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{what} {str(path)!r} cannot be created: {str(probe)!r} is a file; valid: a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(path)!r} is not writable (permission denied on {str(probe)!r}); valid: a "
                        "directory you can write to")


def cache_dir(configured: str = "") -> Path:
    """The cache root: the configured one, else $FINESSL_LAB_CACHE, else ~/.cache/finessl_lab. Never inside the package."""
    root = configured or os.environ.get("FINESSL_LAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "finessl_lab")
    return Path(root)
