"""Notebook 7 in headless Chromium for front-end tests: a server, a browser page, and the waits that work.

Use the fixtures from a test module (``from browser import notebook_server, page``) or the classes directly.
The server runs with a random token on 127.0.0.1 and a free port, in its own Jupyter/IPython dirs; on
teardown it is stopped with SIGTERM and any process it started (kernels, their workers) that is still
alive is killed by pid. Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (no downloads).
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class NotebookServer:
    """``jupyter notebook`` on 127.0.0.1 serving ``root``; ``env`` is added to the server's (and kernels') env."""

    def __init__(
        self, root: Path, env: dict[str, str] | None = None, state: Path | None = None, app: str = "notebook"
    ) -> None:
        self.app = app  # "notebook" (Notebook 7, also serves JupyterLab at /lab) or "nbclassic"
        self.root = Path(root)
        self.state = Path(state or self.root.parent / f"{self.root.name}-jupyter")
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.log_path = self.state / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """A browser URL with the token (e.g. ``notebooks/test.ipynb``)."""
        return f"{self.base}/{path.lstrip('/')}?token={self.token}"

    def start(self, timeout: float = 30) -> NotebookServer:
        self.state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for name, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("IPYTHONDIR", "ipython"),
            ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
            ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ):
            env[name] = str(self.state / sub)
        env.update(self.extra_env)
        command = [
            sys.executable,
            "-m",
            "jupyter",
            self.app,
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root}",
        ]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for(self._ready, timeout, f"the notebook server on port {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"notebook server did not start; log:\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"notebook server exited ({self.process.returncode}); log:\n{self.log_tail()}")
        try:
            self.api("api/status")
            return True
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """Call the server's REST API with the token; returns the decoded JSON (or None)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text else None

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state of the kernel of ``notebook``'s session (``idle``, ``busy``, ...), or None."""
        for session in self.api("api/sessions"):
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def wait_kernel_idle(self, notebook: str, timeout: float = 30) -> None:
        """The UI's idle indicator can fire before the kernel has started; the REST API knows."""
        wait_for(
            lambda: self.kernel_state(notebook) == "idle", timeout, f"the kernel of {notebook} to be idle", interval=0.2
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _descendants(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True) if self.process else []
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the server (it shuts its kernels down), then kill by pid whatever it started that lives on."""
        import psutil

        if self.process is None:
            return
        started = self._descendants()  # kernels run in their own sessions: remember them by pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        survivors = []
        for proc in started:
            try:
                survivors.extend([proc, *proc.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(survivors, timeout=3)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=3)
        self.orphans = [p.pid for p in alive]
        self.process = None


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, with nothing that phones home."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)


def dump_page(page: Any, directory: Path, name: str = "page") -> Path:
    """Screenshot + HTML of ``page`` into ``directory`` (for looking at a failure); returns the PNG path."""
    png = directory / f"{name}.png"
    try:
        page.screenshot(path=str(png), full_page=True)
        (directory / f"{name}.html").write_text(page.content())
    except Exception:  # noqa: BLE001 - a dump must never hide the real failure
        pass
    return png


def while_attached(page: Any, action: Callable[[], T], tries: int = 20) -> T:
    """``action()``, tried again while the element it reads is replaced under it (a live view re-publishing)."""
    for attempt in range(tries):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - playwright's Error; anything else is raised at once
            if "not attached to the DOM" not in str(exc) or attempt == tries - 1:
                raise
            page.wait_for_timeout(250)
    raise AssertionError("unreachable")


# -- pytest fixtures ----------------------------------------------------------------------------------------
requires_chromium = pytest.mark.skipif(not chromium_available(), reason=f"{CHROMIUM} is not installed")


@pytest.fixture
def notebook_root(tmp_path: Path) -> Path:
    root = tmp_path / "notebooks"
    root.mkdir()
    return root


@pytest.fixture
def notebook_server(notebook_root: Path, tmp_path: Path) -> Iterator[NotebookServer]:
    """A running Notebook 7 server on ``notebook_root``; ``$NBMAGIC_HOME`` is a fresh dir for its kernels."""
    home = tmp_path / "nbmagic-home"
    home.mkdir()
    server = NotebookServer(notebook_root, env={"NBMAGIC_HOME": str(home)}, state=tmp_path / "jupyter").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh Playwright page in headless Chromium (1400x1000, 15 s default timeout)."""
    if not chromium_available():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(15_000)
            page = context.new_page()
            yield page
        finally:
            browser.close()


def open_and_run_all(
    page: Any, server: NotebookServer, path: str, notebook: str, *, cell_timeout: float, kernel_timeout: float
) -> None:
    """Open ``notebook`` at the front end's URL ``path`` (JupyterLab or Notebook 7), wait for its first cell and then
    for its kernel to be idle (timeouts in seconds), and choose Run > Run All Cells."""
    page.goto(server.url(path))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=cell_timeout * 1000)
    server.wait_kernel_idle(notebook, timeout=kernel_timeout)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('li[data-command="runmenu:run-all"]').click()
