"""The kernel's handle on the step worker (``worker.py``): start it once, send tasks, wait for exits."""

from __future__ import annotations

import atexit
import itertools
import json
import os
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from ..errors import NbMagicError


class WorkerDied(NbMagicError):
    """The step worker died between two requests (it was killed, or ran out of memory)."""


class WorkerPool:
    """One warm worker process shared by every run in this process; thread-safe."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._preloaded: set[str] = set()
        # one future per preload request in flight; the worker answers them in order
        self._preloads: deque[Future[list[str]]] = deque()
        self._ids = itertools.count(1)

    # -- process -------------------------------------------------------------------------
    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        process = subprocess.Popen(
            [sys.executable, "-m", "nbmagic.run.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # the kernel's Ctrl-C is not the worker's
        )
        ready = process.stdout.readline()
        if not ready:
            raise RuntimeError("the nbmagic step worker did not start")
        self._process = process
        self._preloaded = set()
        threading.Thread(target=self._read, args=(process,), daemon=True, name="nbmagic-worker-reader").start()
        return process

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "exit":
                future = self._pending.pop(event["task"], None)
                if future is not None:
                    future.set_result(event)
            elif event["event"] == "preloaded" and self._preloads:
                self._preloads.popleft().set_result(event["modules"])
        # the worker died: fail everything still waiting on it
        while self._preloads:
            self._preloads.popleft().set_result([])
        for task, future in list(self._pending.items()):
            self._pending.pop(task, None)
            future.set_result(
                {"event": "exit", "task": task, "code": None, "signal": -1, "timed_out": False, "worker_died": True}
            )

    def _send(self, request: dict[str, Any]) -> None:
        process = self._ensure()
        try:
            process.stdin.write((json.dumps(request) + "\n").encode())
            process.stdin.flush()
        except BrokenPipeError as exc:  # it died after _ensure() looked: its steps died with it
            raise WorkerDied(
                f"the step worker died (pid {process.pid}); the steps it was running ended with it: run again "
                "(a new worker starts)"
            ) from exc

    # -- API -----------------------------------------------------------------------------
    def preload(self, modules: list[str]) -> None:
        """Import installed libraries once in the worker so forked steps start warm."""
        with self._lock:
            self._ensure()  # a new worker (first use, or after one died or was closed) has nothing preloaded
            wanted = sorted(set(modules) - self._preloaded)
            if not wanted:
                return
            done: Future[list[str]] = Future()
            self._preloads.append(done)  # before sending: the answer may come back at once
            try:
                self._send({"op": "preload", "modules": wanted})
            except BaseException:
                self._preloads.remove(done)
                raise
        done.result(timeout=600)
        self._preloaded.update(wanted)

    def submit(
        self,
        spec_path: str,
        *,
        timeout: float | None = None,
        memory: int | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[str, Future[dict[str, Any]]]:
        """Start a task; the future resolves with the worker's exit event."""
        with self._lock:
            task = str(next(self._ids))
            future: Future[dict[str, Any]] = Future()
            self._pending[task] = future
            try:
                self._send(
                    {
                        "op": "run",
                        "task": task,
                        "spec": spec_path,
                        "timeout": timeout,
                        "memory": memory,
                        "env": env or {},
                    }
                )
            except BaseException:
                self._pending.pop(task, None)
                raise
        return task, future

    def kill(self, task: str) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                try:
                    self._send({"op": "kill", "task": task})
                except WorkerDied:
                    pass  # the task's process tree died with the worker (PR_SET_PDEATHSIG)

    def close(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                self._process.stdin.close()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            self._process = None


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def worker_pool() -> WorkerPool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            atexit.register(_POOL.close)
        return _POOL
