"""The kernel's side of the warm fork server (forkserver.py): start it once, ask it for servers, follow their exits.

A forked server is handed back as a ``Forked`` object with the few ``subprocess.Popen`` methods the handles use.
``NBMAGIC_SERVE_WARM=0`` turns the warm process off (every server is then a fresh ``python -m`` process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

ENV = "NBMAGIC_SERVE_WARM"


class Forked:
    """A server forked by the warm process: ``pid``, ``poll()``, ``wait()``, ``send_signal()``, ``kill()``."""

    def __init__(self, warm: WarmProcess, pid: int) -> None:
        self.warm = warm
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.warm.exit_code(self.pid)
        return self.returncode

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the server says it listens (False: it exited first, or ``timeout`` passed)."""
        return self.warm.wait_listening(self.pid, timeout)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmProcess:
    """One ``python -m nbmagic.serve.forkserver`` child of the kernel."""

    def __init__(self, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "nbmagic.serve.forkserver", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._started: list[int] = []
        self._started_event = threading.Condition()
        self._exits: dict[int, int] = {}
        self._listening: set[int] = set()
        threading.Thread(target=self._read, name="nbmagic-warm-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._on_line(line)
        self._ready.set()  # the warm process ended: nobody waits for it any more
        with self._started_event:
            self._started_event.notify_all()

    def _on_line(self, line: str) -> None:
        """Follow one line of the warm process (lines that are not its protocol are skipped)."""
        word, *rest = line.split() or [""]
        try:
            numbers = [int(n) for n in rest]
        except ValueError:
            return
        if word == "ready" and not numbers:
            self._ready.set()
            return
        with self._started_event:
            if word == "started" and len(numbers) == 1:
                self._exits.pop(numbers[0], None)  # a reused pid: a new server, not the one that exited
                self._started.append(numbers[0])
            elif word == "listening" and len(numbers) == 1:
                self._listening.add(numbers[0])
            elif word == "exit" and len(numbers) == 2:
                self._exits[numbers[0]] = numbers[1]
                self._listening.discard(numbers[0])
            else:
                return
            self._started_event.notify_all()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self, pid: int) -> int | None:
        if pid in self._exits:
            return self._exits[pid]
        if not self.alive:  # the warm process died: its servers died with it
            return self._exits.get(pid, -signal.SIGTERM)
        return None

    def wait_listening(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._started_event:
            while pid not in self._listening:
                left = deadline - time.monotonic()
                if left <= 0 or pid in self._exits or not self.alive:
                    return False
                self._started_event.wait(min(left, 0.5))
            self._listening.discard(pid)
            return True

    def spawn(
        self, argv: list[str], log: str, env: dict[str, str], timeout: float = 30.0, modules: list[str] | None = None
    ) -> Forked | None:
        """Fork a server (``modules``: the model's library modules, kept imported for the next ones); None when
        the warm process is not (or no longer) usable."""
        if not self._ready.wait(timeout) or not self.alive:
            return None
        argv = [*argv, "--parent-pid", str(self.popen.pid), "--pdeathsig"]
        request = json.dumps({"argv": argv, "log": log, "cwd": os.getcwd(), "env": env, "modules": modules or []})
        with self._lock:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.write(request + "\n")
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError):
                return None
            with self._started_event:
                deadline = time.monotonic() + timeout
                while not self._started and self.alive and time.monotonic() < deadline:
                    self._started_event.wait(0.1)
                if not self._started:
                    return None
                return Forked(self, self._started.pop(0))

    def hint(self, modules: list[str]) -> None:
        """Have the model's library ``modules`` imported now (while the kernel still writes the package)."""
        with self._lock:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.write(json.dumps({"modules": modules}) + "\n")
                self.popen.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def stop(self) -> None:
        if self.alive:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.close()
            except OSError:
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()


_WARM: WarmProcess | None = None
_START = threading.Lock()


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0" and sys.platform.startswith("linux")


def start(env: dict[str, str]) -> WarmProcess | None:
    """The warm process, started on first use (None when turned off)."""
    global _WARM
    if not enabled():
        return None
    with _START:
        if _WARM is None or not _WARM.alive:
            _WARM = WarmProcess(env)
        return _WARM


def prestart() -> None:
    """Start the warm process in the background (it imports for a few seconds; nothing waits for it), then import
    here what the kernel's first ``%serve`` imports (packaging, dill), off that ``%serve``'s path."""
    if not enabled():
        return

    def run() -> None:
        from nbmagic.serve.local import _child_env

        start(_child_env())
        try:
            import dill  # noqa: F401

            from nbmagic.serve import api  # noqa: F401
        except Exception:  # noqa: BLE001 - the %serve imports (and reports) what it needs
            pass

    threading.Thread(target=run, name="nbmagic-warm-start", daemon=True).start()


def hint(model: object) -> None:
    """Tell a live warm process which module ``model``'s class comes from."""
    if _WARM is not None and _WARM.alive:
        _WARM.hint([type(model).__module__])  # the warm process ignores modules that are not installed libraries


def stop() -> None:
    global _WARM
    if _WARM is not None:
        _WARM.stop()
        _WARM = None
