"""Real-browser test of the distillation notebook: JupyterLab started headless on 127.0.0.1, notebook 03
opened in Debian's chromium through Playwright (no browser download), all cells run, the temperature slider
moved, and the plot and the KL readout checked to change; screenshots saved; no error output in the page.

Screenshots and the JupyterLab log go to ``$DOGO_ARTIFACTS`` (if set) or the repository's git-ignored
``test-artifacts/browser``. Outside CI the test skips when chromium or Playwright is missing; in CI
(``$CI`` set) it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "03_mutual_distillation.ipynb"
CHROMIUM = Path(os.environ.get("DOGO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ERROR_OUTPUTS = ('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"], '
                 '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
KL_PATTERN = re.compile(r"KL\(Q‖P\) = (-?[0-9.]+)")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: `pip install playwright` (it needs no browser download)")
    return sync_playwright


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("DOGO_ARTIFACTS") or REPO / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_copy(src: Path, dst: Path, work: Path) -> None:
    """Copy the notebook with SMOKE on and its outputs (runs, figures) redirected into ``work``."""
    nb = nbformat.read(src, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    source = cells[0].source
    edits = {
        r"^SMOKE: bool = .*$": "SMOKE: bool = True",
        r"^OUTPUT_DIR: str = .*$": f"OUTPUT_DIR: str = {str(work / 'runs')!r}",
        r"^FIGURES_DIR: str = .*$": f"FIGURES_DIR: str = {str(work / 'figures')!r}",
    }
    for pattern, line in edits.items():
        source, count = re.subn(pattern, line, source, flags=re.MULTILINE)
        assert count == 1, f"parameters cell has no line matching {pattern}"
    cells[0].source = source
    nbformat.write(nb, dst)


@pytest.fixture
def jupyterlab(tmp_path, artifacts):
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/ (and a link to configs/, so ``../configs`` works)."""
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    _smoke_copy(REPO / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK, tmp_path / "work")

    settings = tmp_path / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Render every cell (JupyterLab 4 otherwise renders only cells near the viewport).
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
               PYTHONUNBUFFERED="1")
    port, token = _free_port(), secrets.token_hex(16)
    log_path = artifacts / "jupyterlab.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; see {log_path}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        try:
            request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
            urllib.request.urlopen(request, timeout=5).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()


# JavaScript run in the page through window.jupyterapp (exposed by --LabApp.expose_app_in_browser).
KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""
RUN_FINISHED = """(errorSelector) => {
    if (document.querySelector(errorSelector)) return true;  // stop waiting: an error is shown
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    const cells = panel.content.widgets.filter(cell => cell.model.type === 'code');
    return kernel.status === 'idle' && cells.every(cell => cell.model.executionCount !== null);
}"""


def test_distillation_notebook_in_chromium(sync_playwright, jupyterlab, artifacts):
    base, token = jupyterlab
    page_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(f"{base}/lab/tree/notebooks/{NOTEBOOK}?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=250)

            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            page.wait_for_function(RUN_FINISHED, arg=ERROR_OUTPUTS, timeout=180_000, polling=500)
            errors = page.locator(ERROR_OUTPUTS)
            if errors.count():
                page.screenshot(path=str(artifacts / "error.png"), full_page=False)
                pytest.fail("error output in the notebook:\n" + "\n---\n".join(errors.all_inner_texts())[:4000])

            readout = page.locator(".dogo-distill-readout")
            plot = page.locator("img.dogo-distill-plot")
            readout.scroll_into_view_if_needed(timeout=30_000)
            plot.wait_for(state="visible", timeout=30_000)
            # The widget view fills its readout after it is attached: wait for the text itself.
            page.wait_for_function(
                "() => { const el = document.querySelector('.dogo-distill-readout');"
                " return el !== null && el.innerText.startsWith('τ = '); }", timeout=60_000, polling=200)
            before_text = readout.inner_text()
            assert before_text.startswith("τ = 0.100"), before_text
            before_kl = float(KL_PATTERN.search(before_text).group(1))
            before_src = plot.get_attribute("src")
            before_png = plot.screenshot()
            page.screenshot(path=str(artifacts / "distill_explorer_before.png"))

            # Move the temperature slider with the keyboard, as a user would after clicking its handle.
            handle = page.locator(".dogo-temperature .noUi-handle")
            handle.focus()
            for _ in range(10):
                handle.press("ArrowRight")
            page.wait_for_function("(text) => document.querySelector('.dogo-distill-readout').innerText !== text",
                                   arg=before_text, timeout=30_000, polling=200)
            page.wait_for_function("(src) => document.querySelector('img.dogo-distill-plot').src !== src",
                                   arg=before_src, timeout=30_000, polling=200)
            page.wait_for_function(KERNEL_IDLE, timeout=30_000, polling=250)
            after_text = readout.inner_text()
            after_kl = float(KL_PATTERN.search(after_text).group(1))
            after_png = plot.screenshot()
            page.screenshot(path=str(artifacts / "distill_explorer_after.png"))
            (artifacts / "readouts.txt").write_text(f"before: {before_text}\nafter:  {after_text}\n")

            tau_after = float(re.search(r"τ = ([0-9.]+)", after_text).group(1))
            assert tau_after > 0.1, after_text  # ArrowRight raised the temperature
            assert after_kl != before_kl, (before_text, after_text)
            assert after_png != before_png
            assert page.locator(ERROR_OUTPUTS).count() == 0
            assert page.get_by_text("Error displaying widget").count() == 0
            assert not page_errors, page_errors
        finally:
            browser.close()
