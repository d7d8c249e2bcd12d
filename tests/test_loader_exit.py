"""DataLoader workers ignore SIGINT/SIGTERM (so a group-wide stop signal reaches only the main process, which
checkpoints and stops), yet a script exiting with a live loader iterator must not hang in multiprocessing's exit
handler (it SIGTERMs and joins every live child)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from finessl_lab.data.features import ignore_stop_signals

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 10_000
        def __getitem__(self, i):
            return torch.tensor([i])

    loader = torch.utils.data.DataLoader(Slow(), batch_size=4, num_workers=2, worker_init_fn=ignore_stop_signals)
    it = iter(loader)              # stays alive until interpreter exit
    first = next(it)
    pids = [w.pid for w in it._workers]
    if sys.argv[1] == "sigterm-workers":   # a group-wide SIGTERM: the workers must survive it
        import signal, time
        for p in pids:
            os.kill(p, signal.SIGTERM)
        time.sleep(0.5)
        assert all(w.is_alive() for w in it._workers)
        assert [int(next(it)[0]) for _ in range(3)] == [4, 8, 12]
    print("workers", *pids, flush=True)
""")


def _run(mode: str, tmp_path):
    path = tmp_path / "live_iterator.py"
    path.write_text(SCRIPT)
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, str(path), mode], capture_output=True, text=True, timeout=90,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    except subprocess.TimeoutExpired as e:  # the bug: the exit handler joins workers that ignore its SIGTERM
        pytest.fail(f"script with a live loader iterator did not exit within 90 s: {e}")
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()[1:]]
    assert len(pids) == 2
    return pids, time.monotonic() - start


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_exit_with_live_loader_iterator_does_not_hang(tmp_path):
    """One subprocess checks both halves: workers survive a SIGTERM aimed at them, and the script still exits."""
    pids, _ = _run("sigterm-workers", tmp_path)
    deadline = time.monotonic() + 10
    while not all(map(_gone, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(_gone, pids)), "loader workers outlived the script"


def test_workers_ignore_stop_signals_is_still_installed():
    from finessl_lab.data.features import ignore_stop_signals

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, h in old.items():
            signal.signal(s, h)
