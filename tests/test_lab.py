"""``finessl-lab lab``: JupyterLab starts on the notebooks, prints its URL with the token, and Ctrl-C (SIGINT) stops
it and its kernels - no process left behind."""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from finessl_lab.cli import main
from finessl_lab.lab import descendants


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


@pytest.mark.browser  # JupyterLab and a kernel: ~15 s idle, more under load; CI runs -m browser
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process tree from /proc (Linux)")
def test_lab_prints_url_and_stops_on_sigint_without_orphans():
    proc = subprocess.Popen([sys.executable, "-m", "finessl_lab", "lab", "--port", "0", "--no-browser",
                             "--no-cache-build"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                            # as from a terminal: a test run started in the background of a script has SIGINT
                            # ignored, which the child would inherit (and rightly keep) - Ctrl-C is what is tested
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "finessl-lab lab exited before printing its URL"
            m = re.search(r"(http://127\.0\.0\.1:(\d+)/lab\?token=(\w+))", line)
            url = m and m.groups()
        assert url, "no URL with a token within 120 s"
        base, token = f"http://127.0.0.1:{url[1]}", url[2]
        # the notebooks folder is served, and the token is needed
        req = urllib.request.Request(f"{base}/api/contents/explore_bias.ipynb?content=0",
                                     headers={"Authorization": f"token {token}"})
        assert urllib.request.urlopen(req, timeout=30).status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/api/contents", timeout=30)
        # a kernel, so that stopping has something to shut down
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", method="POST", data=b"{}",
                                                      headers={"Authorization": f"token {token}"}), timeout=60)
        time.sleep(1.0)
        family = descendants(proc.pid)
        assert len(family) >= 2, f"expected JupyterLab and a kernel under the command, found {family}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        rest = proc.stdout.read()
        assert "JupyterLab stopped" in rest
        time.sleep(0.5)
        assert not [pid for pid in family if _alive(pid)], "processes left behind after Ctrl-C"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_lab_bad_port_is_one_line(capsys):
    assert main(["lab", "--port", "70000", "--no-browser", "--no-cache-build"]) == 2
    assert capsys.readouterr().err.strip() == "error: --port 70000 is not valid; valid: 0 (a free port) to 65535"
