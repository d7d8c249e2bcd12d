"""``finessl-lab lab``: JupyterLab from this environment on the notebooks, with the feature cache ready.

:func:`start_lab` starts ``python -m jupyter lab`` (the interpreter running this code, so its kernels import this
finessl_lab) in its own process group, waits until it answers on its port, and returns a :class:`LabServer`;
``LabServer.stop()`` shuts it down (SIGTERM: JupyterLab stops its kernels, then exits) and kills whatever of the
group is left. :func:`lab` is the command: it builds the embedded feature cache first (with a progress bar) when it
is missing, prints the URL with its token and stops cleanly on Ctrl-C. The browser test (tests/test_browser.py)
uses :func:`start_lab` with its own settings (a temporary copy of the notebooks).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running JupyterLab: its process (leader of its own process group), URL root and token."""
    process: subprocess.Popen
    ip: str
    port: int
    token: str
    root_dir: Path
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def url(self, path: str = "") -> str:
        """``/lab/tree/<path>`` with the token, the address a browser opens."""
        return f"{self.base}/lab/tree/{path}?token={self.token}" if path else f"{self.base}/lab?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the server (it shuts its kernels down), then SIGKILL to its whole process group and to any
        of its descendants still alive (kernels run in their own sessions)."""
        p = self.process
        family = descendants(p.pid)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # kernels or helpers that outlived the server
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for pid, start in family.items():
            if _start_time(pid) == start:  # the same process, not a new one that reuses the id
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return p.returncode


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    found, todo = {}, list(children.get(pid, []))
    while todo:
        c = todo.pop()
        start = _start_time(c)
        if start is not None:
            found[c] = start
        todo += children.get(c, [])
    return found


def lab_argv(root_dir: Path, ip: str, port: int, token: str, open_browser: bool, settings_dir: Path | None = None,
             workspaces_dir: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}", f"--ServerApp.open_browser={open_browser}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses otherwise
        argv.append("--ServerApp.allow_root=True")
    if settings_dir is not None:
        argv.append(f"--LabApp.user_settings_dir={settings_dir}")
    if workspaces_dir is not None:
        argv.append(f"--LabApp.workspaces_dir={workspaces_dir}")
    return argv


def start_lab(root_dir: Path | str = NOTEBOOKS, ip: str = "127.0.0.1", port: int = 0, token: str | None = None,
              open_browser: bool = False, settings_dir: Path | None = None, workspaces_dir: Path | None = None,
              log: Path | None = None, timeout: float = 120.0, env: dict | None = None) -> LabServer:
    """Start JupyterLab on ``root_dir`` and wait until its API answers; ``port=0`` picks a free port."""
    root_dir = Path(root_dir).resolve()
    if not root_dir.is_dir():
        raise UserError(f"notebook folder {str(root_dir)!r} does not exist; valid: an existing folder")
    port = port or free_port(ip)
    token = token or secrets.token_hex(24)
    env = dict(os.environ if env is None else env)
    # kernels import the finessl_lab this process imports (a checkout on PYTHONPATH included)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = open(log, "ab") if log else None
    proc = subprocess.Popen(lab_argv(root_dir, ip, port, token, open_browser, settings_dir, workspaces_dir),
                            cwd=root_dir, env=env, start_new_session=True,
                            stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT if out else None)
    if out:
        out.close()
    server = LabServer(proc, ip, port, token, root_dir, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise UserError(f"JupyterLab exited with status {proc.returncode} before answering on {ip}:{port}"
                                + (f" (its log: {log})" if log else " (its log is above)")
                                + "; is the port free?")
            try:
                server.api("status")
                return server
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise UserError(f"JupyterLab did not answer on {ip}:{port} within {timeout:.0f} s")
            time.sleep(0.25)
    except BaseException:
        server.stop()
        raise


def ensure_feature_cache(progress: bool = True) -> Path | None:
    """Build the embedded profile's feature cache if it is missing (the notebooks and the explorer read it)."""
    from .build import build_experiment
    from .presets import resolve

    cfg = resolve("embedded")
    cfg.run.progress = progress
    return build_experiment(cfg.validate(), progress=progress).feature_path


def lab(port: int = 0, ip: str = "127.0.0.1", open_browser: bool = True, build_cache: bool = True,
        root_dir: Path | str = NOTEBOOKS) -> int:
    """The ``finessl-lab lab`` command: blocks until Ctrl-C (or SIGTERM), then stops JupyterLab and its kernels."""
    if build_cache:
        print("embedded feature cache: checking (built once, with a progress bar, if missing) ...", flush=True)
        path = ensure_feature_cache(progress=True)
        print(f"embedded feature cache: {path}", flush=True)
    server = start_lab(root_dir, ip=ip, port=port, open_browser=open_browser)
    stop = {"signal": None}

    def on_term(signum, frame):
        stop["signal"] = signum
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        print(f"JupyterLab on {server.root_dir}:\n    {server.url()}\n"
              f"open explore_bias.ipynb for the teaching notebook; Ctrl-C stops the server and its kernels", flush=True)
        while server.alive():
            time.sleep(0.5)
        print(f"JupyterLab exited with status {server.process.returncode}", file=sys.stderr)
        return server.process.returncode or 1
    except KeyboardInterrupt:
        print("stopping JupyterLab ...", flush=True)
        code = server.stop()
        print(f"JupyterLab stopped (status {code})", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        server.stop()
