"""The notebooks as a person sees them: JupyterLab in a real (headless) Chromium driven by Playwright.

* ``explore_bias.ipynb``: run all cells, no error output and no "Error displaying widget", then move the lambda
  slider and the algorithm dropdown and check that the picture is redrawn (a different image, the new settings in
  the status line, one picture - not an appended second one) within 2 s of the change, timed in the browser.
* every executed notebook of an embedded ``reproduce --quick`` run (``$FINESSL_LAB_EXECUTED_DIR``, else
  ``figures/executed/``): no error outputs, every figure a decodable non-blank PNG, and the notebook renders in
  JupyterLab with every image displayed and no widget / rendering errors.

Marked ``browser`` (not in the default run); run with ``pytest -q -m browser`` after ``bash scripts/setup.sh``
(installs playwright and, as root, Debian's chromium). Needs /usr/bin/chromium (``$FINESSL_LAB_CHROMIUM``);
playwright never downloads a browser here. Without them the tests skip, unless ``FINESSL_LAB_REQUIRE_BROWSER=1``
(CI), which turns a skip into a failure. ``FINESSL_LAB_SCREENSHOTS=figures/screenshots`` refreshes the committed
screenshots of the teaching notebook before and after a slider move.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FINESSL_LAB_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("FINESSL_LAB_REQUIRE_BROWSER") == "1"
REDRAW_BOUND_S = 2.0  # issue 9: a slider change redraws in <= 2 s on 2 CPU cores
WIDGET_ERROR = "Error displaying widget"


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (FINESSL_LAB_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _executed_dir() -> Path:
    return Path(os.environ.get("FINESSL_LAB_EXECUTED_DIR") or ROOT / "figures" / "executed")


# -- fixtures: JupyterLab on a copy of the notebooks, one headless Chromium; both stopped whatever happens ---------
@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    """A scratch copy: the tests must not write outputs into notebooks/ (JupyterLab saves) or figures/."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "figures").mkdir()
    executed = _executed_dir()
    if executed.is_dir():
        shutil.copytree(executed, root / "executed", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = root / ".settings"
    for ext, values in {
        # every cell attached to the DOM (the default windowing detaches off-screen cells); closing a notebook
        # shuts its kernel down
        "notebook-extension/tracker": {"windowingMode": "none", "kernelShutdown": True},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / "@jupyterlab" / f"{ext}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return root


@pytest.fixture(scope="module")
def lab_server(lab_root):
    from finessl_lab.lab import descendants, ensure_feature_cache, start_lab

    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    ensure_feature_cache(progress=False)  # the notebook reads it; built here (once) rather than under a timeout
    server = start_lab(lab_root, settings_dir=lab_root / ".settings", workspaces_dir=lab_root / ".workspaces",
                       log=lab_root / "jupyterlab.log")
    try:
        yield server
    finally:
        family = descendants(server.process.pid)
        server.stop()
        left = [pid for pid in family if Path(f"/proc/{pid}").exists()
                and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
        assert server.process.poll() is not None and not left, f"JupyterLab left processes behind: {left}"


@pytest.fixture(scope="module")
def browser(lab_server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
    except BaseException:
        pw.stop()
        raise
    try:
        yield b
    finally:
        try:
            b.close()
        finally:
            pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, device_scale_factor=1)
    p = context.new_page()
    p.set_default_timeout(60_000)
    errors = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.errors = errors
    try:
        yield p
    finally:
        context.close()


# -- helpers ---------------------------------------------------------------------------------------------------
def _open(page, server, path: str):
    page.goto(server.url(path))
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell", timeout=120_000)
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def _wait_kernel_ready(page, server, path: str, timeout: float = 120.0):
    """Until the notebook's kernel is started, connected to this page and idle (running cells earlier makes
    JupyterLab ask which kernel to use)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in server.api("sessions") if s.get("path") == path]
        k = sessions[0]["kernel"] if sessions else {}
        if k.get("execution_state") == "idle" and k.get("connections", 0) >= 1:
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"the kernel of {path} did not become ready within {timeout:.0f} s")
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                           ".some(e => /Python 3.*Idle/.test(e.textContent))", timeout=60_000)


def _error_outputs(panel) -> list[str]:
    """Error and stderr outputs as JupyterLab renders them, and widget / renderer failures."""
    texts = panel.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    texts += [t for t in panel.locator(".jp-OutputArea-output").all_inner_texts()
              if WIDGET_ERROR in t or "Could not render" in t]
    return [t[:400] for t in texts]


def _png(page, locator) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    return Image.open(io.BytesIO(locator.screenshot(animations="disabled"))).convert("RGB")


def _difference(a, b) -> float:
    """Mean absolute pixel difference (0-255) of two screenshots, cropped to the common size."""
    w, h = min(a.width, b.width), min(a.height, b.height)
    x = np.asarray(a.crop((0, 0, w, h)), dtype=np.float32)
    y = np.asarray(b.crop((0, 0, w, h)), dtype=np.float32)
    return float(np.abs(x - y).mean())


TIMER_JS = """(el) => {
  // t0: the key press or the select change that moves the control; t1: the animation frame in which the
  // explorer's picture shows a new, fully decoded image (the redraw as the student sees it)
  const img = el.querySelector('img');
  const old = img.src;
  const r = window.__redraw = {t0: null, t1: null, old: old};
  const start = () => { if (r.t0 === null) r.t0 = performance.now(); };
  document.addEventListener('keydown', start, {capture: true, once: true});
  document.addEventListener('change', start, {capture: true, once: true});
  const tick = () => {
    const now = el.querySelector('img');
    if (r.t0 !== null && now && now.src !== old && now.complete && now.naturalWidth > 0) {
      r.t1 = performance.now(); r.src = now.src; return;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def _timed_change(page, explorer, act) -> float:
    """Seconds from the control change (``act()``) to the new picture on screen, measured in the page."""
    explorer.evaluate(TIMER_JS)
    act()
    page.wait_for_function("window.__redraw.t1 !== null", timeout=60_000, polling="raf")
    r = page.evaluate("window.__redraw")
    return (r["t1"] - r["t0"]) / 1000


# -- the tests -------------------------------------------------------------------------------------------------
def test_teaching_notebook_runs_and_redraws_in_the_browser(lab_server, page):
    panel = _open(page, lab_server, "notebooks/explore_bias.ipynb")
    _wait_kernel_ready(page, lab_server, "notebooks/explore_bias.ipynb")
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    explorer = panel.locator(".finessl-explorer")
    try:
        explorer.locator("img").wait_for(state="visible", timeout=240_000)
    except Exception:
        page.screenshot(path=str(Path(lab_server.root_dir) / "failure.png"))
        raise AssertionError(f"the explorer did not appear; outputs: {panel.locator('.jp-OutputArea-output').all_inner_texts()}; "
                             f"screenshot {Path(lab_server.root_dir) / 'failure.png'}") from None
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    assert _error_outputs(panel) == [], _error_outputs(panel)
    assert page.get_by_text(WIDGET_ERROR).count() == 0
    assert panel.locator(".jp-OutputArea-output img").count() >= 4  # the three static figures + the dashboard
    status = explorer.locator(".widget-html")
    assert "lambda=0.5" in status.inner_text() and "test top-1" in status.inner_text()

    explorer.scroll_into_view_if_needed()
    shots = os.environ.get("FINESSL_LAB_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        explorer.screenshot(path=str(Path(shots) / "explore_bias_before.png"), animations="disabled")
    picture = explorer.locator("img")
    before = _png(page, picture)

    # lambda: one keyboard step on the focused slider handle (0.5 -> 0.6)
    handle = explorer.locator(".widget-slider", has=page.locator(".widget-label", has_text="lambda")) \
        .locator(".noUi-handle")
    handle.focus()
    lam_s = _timed_change(page, explorer, lambda: handle.press("ArrowRight"))
    page.wait_for_function("(el) => el.innerText.includes('lambda=0.6') && el.innerText.includes('CPU-s')",
                           arg=status.element_handle())
    lam_kernel = status.inner_text()
    after_lambda = _png(page, picture)
    assert explorer.locator("img").count() == 1  # replaced, not appended
    assert _difference(before, after_lambda) > 0.5, "the picture did not change after the lambda slider moved"

    # algorithm: FixMatch has no aux head, so panel (c) empties
    select = explorer.locator(".widget-dropdown select")
    alg_s = _timed_change(page, explorer, lambda: select.select_option("fixmatch"))
    page.wait_for_function("(el) => el.innerText.includes('algorithm=fixmatch') && el.innerText.includes('CPU-s')",
                           arg=status.element_handle())
    after_alg = _png(page, picture)
    assert explorer.locator("img").count() == 1
    assert _difference(after_lambda, after_alg) > 0.5
    if shots:
        explorer.screenshot(path=str(Path(shots) / "explore_bias_after.png"), animations="disabled")
    assert _error_outputs(panel) == [] and page.get_by_text(WIDGET_ERROR).count() == 0
    assert not page.errors, page.errors
    print(f"\nin-browser redraw: lambda slider {lam_s:.2f} s, algorithm dropdown {alg_s:.2f} s "
          f"(load average {os.getloadavg()[0]:.1f});\n  kernel: {lam_kernel}\n  kernel: {status.inner_text()}")
    assert lam_s <= REDRAW_BOUND_S and alg_s <= REDRAW_BOUND_S, \
        f"redraw took {lam_s:.2f} s (lambda) and {alg_s:.2f} s (algorithm) in the browser; bound {REDRAW_BOUND_S} s"


def _close_current(page):
    """Close the current notebook tab (its kernel shuts down); discard the metadata JupyterLab updated on open."""
    panels = page.locator(".jp-NotebookPanel")
    n = panels.count()
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current .lm-TabBar-tabCloseIcon").click()
    dialog = page.locator(".jp-Dialog")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if dialog.count():
            dialog.locator("button.jp-mod-warn").first.click()  # "Discard"
        if panels.count() < n and not dialog.count():
            return
        time.sleep(0.1)
    raise AssertionError(f"could not close the notebook tab: {dialog.all_inner_texts()}")


def _figure_outputs(nb: dict) -> tuple[list[str], list[bytes]]:
    errors, pngs = [], []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                errors.append(f"{out['ename']}: {out['evalue']}"[:300])
            if out.get("data", {}).get("image/png"):
                pngs.append(base64.b64decode(out["data"]["image/png"]))
    return errors, pngs


def test_executed_figure_notebooks_render_with_non_blank_figures(lab_server, lab_root, page):
    from PIL import Image

    notebooks = sorted((lab_root / "executed").glob("*.ipynb")) if (lab_root / "executed").is_dir() else []
    if not notebooks:
        _unavailable(f"no executed notebooks in {_executed_dir()} (run finessl-lab reproduce --profile embedded "
                     "--quick, or set FINESSL_LAB_EXECUTED_DIR)")
    expected = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {p.name for p in notebooks} >= expected - {"explore_bias.ipynb"}, "executed notebooks are missing"
    problems = []
    page.goto(lab_server.url("executed") + "&reset")  # not the layout the teaching test left open
    page.wait_for_selector(".jp-DirListing-item", timeout=120_000)
    for path in notebooks:
        errors, pngs = _figure_outputs(json.loads(path.read_text()))
        problems += [f"{path.name}: {e}" for e in errors]
        if not pngs:
            problems.append(f"{path.name}: no figure output")
        for i, data in enumerate(pngs):
            img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)
            if img.std() < 2.0 or min(img.shape) < 50:
                problems.append(f"{path.name}: figure {i} is blank (pixel std {img.std():.2f}, size {img.shape})")
        # in JupyterLab: every image displayed (decoded, non-empty), no error / widget / renderer failure
        page.locator(".jp-DirListing-itemText", has_text=path.name).first.dblclick()
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        page.wait_for_function("(n) => { const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');"
                               " const imgs = p ? [...p.querySelectorAll('.jp-OutputArea-output img')] : [];"
                               " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                               arg=len(pngs), timeout=30_000)
        problems += [f"{path.name}: renders an error output: {t}" for t in _error_outputs(panel)]
        shown = panel.locator(".jp-OutputArea-output img").count()
        if shown != len(pngs):
            problems.append(f"{path.name}: {shown} images displayed, {len(pngs)} in the file")
        _close_current(page)
    # page errors are not checked here: closing a notebook whose kernel is still starting makes JupyterLab's own
    # pending promises fail ('Disposed', "reading 'kernel'"); widget and rendering failures are checked above
    assert not problems, "\n".join(problems)
