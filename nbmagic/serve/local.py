"""Run nbmagic's KServe model server in a subprocess of the kernel and hand back a ``Server`` handle.

The server binds 127.0.0.1 on a free port (or ``port``), gRPC stays off unless asked, and it dies with the
kernel: the child sets PR_SET_PDEATHSIG and watches the parent pid; ``atexit`` stops every live server.
"""

from __future__ import annotations

import atexit
import html
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from nbmagic.serve import client
from nbmagic.serve.errors import ServeError, ServerFailed
from nbmagic.serve.package import Package

HOST = "127.0.0.1"
_LIVE: dict[str, Server] = {}


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(port: int, host: str = HOST) -> int:
    """``port`` if nothing listens on it, else a ServeError naming it."""
    if not 0 < port < 65536:
        raise ServeError(f"--port {port} is not a TCP port number")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            raise ServeError(
                f"port {port} is already in use on {host}: choose another --port or leave it out"
            ) from None
    return port


class _Process:
    """One server subprocess and its log file."""

    def __init__(self, role: str, args: list[str], log: Path, modules: list[str] | None = None) -> None:
        self.role = role
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        env = _child_env()
        from nbmagic.serve import warm

        process = warm.start(env)
        self.popen: Any = process.spawn(args, str(log), env, modules=modules) if process is not None else None
        if self.popen is not None:
            return
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                [
                    sys.executable,
                    "-m",
                    "nbmagic.serve.server",
                    *args,
                    "--parent-pid",
                    str(os.getpid()),
                    *(["--pdeathsig"] if threading.current_thread() is threading.main_thread() else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def tail(self, n: int = 20) -> list[str]:
        try:
            with open(self.log, errors="replace") as f:
                return [line.rstrip("\n") for line in deque(f, maxlen=n)]
        except OSError:
            return []

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _child_env() -> dict[str, str]:
    """The kernel's environment, with nbmagic and the kernel's working directory importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [root, os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _answers(host: str, port: int, path: str) -> bool:
    """Whether ``GET path`` answers 200 (http.client: the kernel need not import requests to start a server)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Server:
    """A live local model server: ``url``, ``predict()``, ``logs()``, ``status``, ``stop()``."""

    def __init__(
        self,
        package: Package,
        *,
        port: int | None = None,
        split: bool = False,
        protocol: str = "v1",
        grpc_port: int | None = None,
        timeout: float = 60.0,
        log_dir: Path | None = None,
    ) -> None:
        if protocol not in ("v1", "v2"):
            raise ServeError(f"--protocol {protocol} is not supported: use v1 or v2")
        self.package = package
        self.name = package.name
        self.split = split
        self.protocol = protocol
        if self.name in _LIVE:  # serving again under the same name replaces the old server (and frees its port)
            _LIVE[self.name].stop()
        self.port = check_port(port) if port else free_port()
        self.grpc_port = check_port(grpc_port) if grpc_port else None
        self.url = f"http://{HOST}:{self.port}"
        self.predictor_url = self.url  # split: the predictor's own server
        self._session: Any = None
        log_dir = log_dir or package.path.parent / "logs"
        self.processes: list[_Process] = []
        common = ["--package", str(package.path), "--name", self.name, "--host", HOST]
        modules = [str(package.manifest.get("type_name", "")).rpartition(".")[0]]  # the model class's module
        try:
            if split:
                predictor_port = free_port()
                self.predictor_url = f"http://{HOST}:{predictor_port}"
                self.processes.append(
                    _Process(
                        "predictor",
                        [*common, "--http-port", str(predictor_port), "--predictor-only"],
                        log_dir / "predictor.log",
                        modules,
                    )
                )
                # both start at once: the transformer needs the predictor only when a request arrives
                self.processes.append(
                    _Process(
                        "transformer",
                        [
                            *common,
                            "--http-port",
                            str(self.port),
                            "--transformer-only",
                            "--predictor-host",
                            f"{HOST}:{predictor_port}",
                            "--predictor-protocol",
                            "v2",  # binary V2 tensors between the two: dtypes and shapes survive the hop
                            *(["--grpc-port", str(self.grpc_port)] if self.grpc_port else []),
                        ],
                        log_dir / "transformer.log",
                        modules,
                    )
                )
                self._wait_ready(self.processes[0], self.predictor_url, timeout)
            else:
                self.processes.append(
                    _Process(
                        "server",
                        [
                            *common,
                            "--http-port",
                            str(self.port),
                            *(["--grpc-port", str(self.grpc_port)] if self.grpc_port else []),
                        ],
                        log_dir / "server.log",
                        modules,
                    )
                )
            self._wait_ready(self.processes[-1], self.url, timeout)
        except BaseException:
            self.stop()
            raise
        _LIVE[self.name] = self

    def _wait_ready(self, proc: _Process, url: str, timeout: float) -> None:
        """Until ``GET /v1/models/NAME`` answers 200 (a forked server first says when it listens)."""
        deadline = time.monotonic() + timeout
        listening = getattr(proc.popen, "wait_listening", None)
        if listening is not None:
            listening(timeout)  # then one request confirms (or the loop below reports why not)
        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
        while True:
            code = proc.popen.poll()
            if code is not None:
                raise ServerFailed(self._failure(proc, f"exited with code {code} before it was ready"))
            if _answers(host, int(port), f"/v1/models/{self.name}"):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        raise ServerFailed(self._failure(proc, f"was not ready after {timeout:.0f} s"))

    def _failure(self, proc: _Process, what: str) -> str:
        tail = "\n".join("    " + line for line in proc.tail(15))
        return f"{proc.role} for '{self.name}' {what}; last lines of {proc.log}:\n{tail}"

    # --- the handle -----------------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.package.manifest["type_name"]

    @property
    def transformer(self) -> str | None:
        return self.package.manifest.get("transformer")

    @property
    def status(self) -> str:
        """``running``, ``stopped`` or ``exited (code N)`` (the first process that is not running)."""
        codes = [p.popen.poll() for p in self.processes]
        if all(c is None for c in codes):
            return "running" if self.processes else "stopped"
        if getattr(self, "_stopped", False):
            return "stopped"
        return f"exited (code {next(c for c in codes if c is not None)})"

    def predict(self, data: Any, protocol: str | None = None, raw: bool = False) -> Any:
        """Send ``data`` (raw rows, or a ready V1/V2 body dict); returns the predictions (``raw``: the response)."""
        import requests

        protocol = protocol or ("v2" if isinstance(data, dict) and "inputs" in data else self.protocol)
        status = self.status
        if status != "running":
            raise ServeError(f"server '{self.name}' is {status}{self._last_words()}: serve it again")
        if self._session is None:
            self._session = requests.Session()
        body = client.request_body(data, protocol)
        response = client.post(self._session, client.infer_url(self.url, self.name, protocol), body, self.name)
        return response if raw else client.predictions(response)

    def _last_words(self) -> str:
        """`` (last log line: ...)`` of the first process that exited on its own (nothing after stop())."""
        if getattr(self, "_stopped", False):
            return ""
        for proc in self.processes:
            if proc.popen.poll() is not None:
                lines = [line.strip() for line in proc.tail(20) if line.strip()]
                return f" (last log line of {proc.log}: {lines[-1]})" if lines else ""
        return ""

    def logs(self, n: int = 50, follow: float | None = None) -> str:
        """The last ``n`` log lines (both processes when split); ``follow=SECONDS`` shows a live tail in the notebook."""
        if follow:
            return self._follow(n, follow)
        parts = []
        for proc in self.processes:
            lines = proc.tail(n)
            parts.append("\n".join(([f"== {proc.role} =="] if len(self.processes) > 1 else []) + lines))
        return "\n".join(parts)

    def _follow(self, n: int, seconds: float) -> str:
        """Refresh one display of the last ``n`` lines for ``seconds`` (interrupt the cell to stop early)."""
        from IPython import get_ipython
        from IPython.display import Pretty, display

        handle = display(Pretty(self.logs(n)), display_id=True) if get_ipython() is not None else None
        shown = self.logs(n)
        if handle is None:  # not in IPython: print the lines as they come
            print(shown)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and self.status == "running":
                time.sleep(0.5)
                text = self.logs(n)
                if text == shown:
                    continue
                if handle is None:
                    old = set(shown.splitlines())
                    print("\n".join(line for line in text.splitlines() if line not in old))
                else:
                    handle.update(Pretty(text))
                shown = text
        except KeyboardInterrupt:
            pass
        return ""

    def stop(self) -> None:
        """Stop the server processes (idempotent)."""
        self._stopped = True
        for proc in reversed(self.processes):
            proc.stop()
        if _LIVE.get(self.name) is self:
            del _LIVE[self.name]
        if self._session is not None:
            self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.url} {self.status}>"

    def _repr_html_(self) -> str:
        layout = "split: transformer -> predictor" if self.split else "transformer in process"
        rows = [
            ("name", self.name),
            ("URL", self.url),
            ("model type", self.model_type),
            ("transformer", f"{self.transformer or '-'} ({layout})" if self.transformer else "-"),
            ("protocol", self.protocol + (f" + gRPC :{self.grpc_port}" if self.grpc_port else "")),
            ("status", self.status),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f"<table class='nbmagic-server'>{body}</table>"


def serve(package: Package, **options: Any) -> Server:
    """Start a local server for ``package`` (replacing a live one with the same name)."""
    return Server(package, **options)


def live() -> dict[str, Server]:
    """Live servers by name (stopped or crashed ones are dropped)."""
    for _name, server in list(_LIVE.items()):
        if server.status != "running":
            server.stop()
    return dict(_LIVE)


def stop(name: str) -> None:
    if name not in _LIVE:
        known = ", ".join(sorted(_LIVE)) or "none"
        raise ServeError(f"no live server named '{name}' (live: {known})")
    _LIVE[name].stop()


def stop_all() -> None:
    for server in list(_LIVE.values()):
        server.stop()


def _at_exit() -> None:
    from nbmagic.serve import warm

    stop_all()
    warm.stop()


atexit.register(_at_exit)
