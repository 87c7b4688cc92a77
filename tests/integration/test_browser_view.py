"""The live view in a real browser: JupyterLab in headless Chromium while a map runs.

JupyterLab (a real server on 127.0.0.1, with a token) opens a notebook that displays an
executor and runs a map whose tasks wait for a file this test creates; the test checks the
view in the page while the map runs and after, and keeps screenshots of both (their paths
are printed, under pytest's cache: ``.pytest_cache/d/dlexec-browser/``). Twice: with
ipywidgets (the view is a widget), and with ipywidgets hidden from the notebook's kernel
(the view is an HTML output that JupyterLab updates in place through its display id).

Chromium is Debian's (``/usr/bin/chromium``, or ``$DLEXEC_CHROMIUM``), driven by playwright.
Without them the test is skipped, with the reason, except in CI (``$CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import requests

from ..conftest import free_port, wait_gone

pytestmark = pytest.mark.timeout(150)

CHROMIUM = os.environ.get("DLEXEC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "dlexec-browser-test-token"

HIDE_WIDGETS = 'import sys\nsys.modules["ipywidgets"] = None  # as if ipywidgets were not installed'
SETUP = """
import os, time
import dlexec

RELEASE = {release!r}  # the held tasks wait for this file, which the test creates

def held(x):
    deadline = time.monotonic() + 90
    while x and not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.02)
    return x

ex = dlexec.DatalayerExecutor(2)
"""
CELLS = [SETUP, "ex", "print(sum(ex.options(timeout=120).map(held, range(6))))", "ex.shutdown()"]


def requirements():
    """Playwright's sync API, or the reason it cannot run here."""
    reasons = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        reasons.append(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        reasons.append("playwright is not installed (pip install playwright; no browser download needed)")
    try:
        import jupyterlab  # noqa: F401
        import ipywidgets  # noqa: F401
    except ImportError as exc:
        reasons.append(f"{exc.name} is not installed")
    if reasons:
        message = "the browser test cannot run: " + "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(message + " (in CI it must run: .ci/run installs them)")
        pytest.skip(message)
    return sync_playwright


class JupyterLab:
    """``jupyter lab`` on 127.0.0.1 in its own process group, with no call to the internet."""

    def __init__(self, base: Path):
        self.root, self.port = base / "notebooks", free_port()
        self.root.mkdir()
        self.url = f"http://127.0.0.1:{self.port}"
        config = base / "config"
        settings = config / "settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        (config / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "expose_app_in_browser": True,
            "user_settings_dir": str(config / "settings"),
            "workspaces_dir": str(config / "workspaces"),
        }}))
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
                   f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={self.root}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLEXEC_")}
        env["JUPYTER_CONFIG_DIR"] = str(config)
        self.log_path = base / "jupyterlab.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/api/status", headers=self.headers, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"jupyter lab did not start: {self.log_path.read_text()[-3000:]}")

    @property
    def headers(self) -> dict:
        return {"Authorization": f"token {TOKEN}"}

    def processes(self) -> list[int]:
        """The server and everything it started (the notebook's kernel, and the executor's)."""
        import psutil

        try:
            server = psutil.Process(self.process.pid)
            return [self.process.pid] + [p.pid for p in server.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> list[int]:
        """Stop the kernels through the API (each stops its executor), then the server's group.
        Returns the processes still alive after that (none, normally)."""
        pids = self.processes()
        try:
            for kernel in requests.get(f"{self.url}/api/kernels", headers=self.headers, timeout=5).json():
                requests.delete(f"{self.url}/api/kernels/{kernel['id']}", headers=self.headers, timeout=30)
        except requests.RequestException:
            pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        left = wait_gone(pids, timeout=20)
        for pid in left:  # not to leave them behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = JupyterLab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() == [], "processes left after JupyterLab stopped"


def view_text(page) -> str:
    """The text of the executor's view in the page ('' while it is not there)."""
    return page.evaluate("() => Array.from(document.querySelectorAll('.dlexec-view'))"
                         ".map(e => e.innerText).join('\\n')")


def wait_view(page, *needles: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = view_text(page)
        if all(needle in text for needle in needles):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"the view never showed {needles}; it shows: {text!r}")


@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no-ipywidgets"])
def test_the_view_updates_live_in_jupyterlab(widgets, request):
    sync_playwright = requirements()
    lab = request.getfixturevalue("lab")
    name = "widgets" if widgets else "html"
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    artifacts = Path(cache.mkdir("dlexec-browser")) if cache is not None else lab.root / "screenshots"
    artifacts.mkdir(exist_ok=True)
    release = lab.root / f"release-{name}"
    cells = ([] if widgets else [HIDE_WIDGETS]) + [CELLS[0].format(release=str(release))] + CELLS[1:]
    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.strip()) for c in cells],
                                            metadata={"kernelspec": kernelspec}), lab.root / f"{name}.ipynb")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # A workspace of its own: only this notebook open.
            page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{name}.ipynb?token={TOKEN}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function("(path) => { const nb = window.jupyterapp?.shell.currentWidget;"
                                   " return nb?.context?.path === path"
                                   " && nb.sessionContext?.session?.kernel?.status === 'idle'; }",
                                   arg=f"{name}.ipynb", timeout=60_000)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # While the map runs (its cell executing): one task done, the others held.
            running = wait_view(page, "1/6 tasks", ": running")
            assert "map(held)" in running and "dlexec-worker-1" in running
            assert page.locator(".dlexec-view").count() == 1
            in_widget = page.locator(".jupyter-widgets .dlexec-view").count() == 1
            assert in_widget == widgets, "a widget with ipywidgets, an HTML output without"
            page.screenshot(path=str(artifacts / f"{name}-running.png"))

            release.touch()
            done = wait_view(page, "6/6 tasks", ": shut down")
            assert "6 done" in done and "0 running" in done
            page.screenshot(path=str(artifacts / f"{name}-done.png"))
            inner = page.evaluate("() => document.querySelector('.dlexec-view').outerHTML")
            assert TOKEN not in inner and str(lab.port) not in inner
        except BaseException:
            page.screenshot(path=str(artifacts / f"{name}-failure.png"))
            print(f"screenshot of the failure: {artifacts / f'{name}-failure.png'}")
            raise
        finally:
            browser.close()
    for shot in (f"{name}-running.png", f"{name}-done.png"):
        path = artifacts / shot
        assert path.stat().st_size > 0
        request.node.user_properties.append(("screenshot", str(path)))
        print(f"screenshot: {path}")
