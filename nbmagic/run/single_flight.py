"""Single-flight for steps: one execution per cache key at a time, across threads and processes on one store.

The first run to need a key holds an exclusive ``flock`` on ``<store>/flights/<key>.lock`` while its step runs;
others wait for the lock, then find the leader's result in the cache. A leader that fails leaves
``<key>.failed`` (its error and run) for the waiters to fail with; a leader that is stopped or dies leaves
nothing (the OS drops a dead process's lock), and the next waiter runs the step itself.

The leader removes its lock file as it releases it (``store.lockfiles``: a waiter that locked the removed file
notices and tries again), so ``flights/`` holds only the keys running now; ``gc`` sweeps what killed leaders
left behind.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..store import lockfiles

POLL = 0.05  # seconds between lock attempts when the leader is in another process

_wakeups: dict[str, threading.Condition] = {}
_wakeups_lock = threading.Lock()


def _condition(path: Path) -> threading.Condition:
    with _wakeups_lock:
        return _wakeups.setdefault(str(path), threading.Condition())


class Flight:
    """A held lock on one cache key; ``release(error)`` once the step has finished (or will not run)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def failure_path(self) -> Path:
        return self.path.with_suffix(".failed")

    def release(self, error: str | None = None, run_id: str | None = None) -> None:
        if self._fd is None:
            return
        if error is not None:
            record = {"error": error, "run": run_id, "at": time.time()}
            tmp = self.failure_path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.failure_path)
        fd, self._fd = self._fd, None
        lockfiles.unlock(fd, self.path)
        condition = _condition(self.path)
        with condition:
            condition.notify_all()


def _lock_path(root: Path, key: str) -> Path:
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"not a cache key: {key!r}")
    return Path(root) / lockfiles.FLIGHTS_DIR / f"{key}.lock"


def try_acquire(root: Path, key: str) -> Flight | None:
    """The flight for ``key`` if nobody else holds it, else None."""
    path = _lock_path(root, key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = lockfiles.try_lock(path)
    return None if fd is None else Flight(path, fd)


def wait_for(root: Path, key: str, cancel: threading.Event) -> Future[dict[str, Any]]:
    """A future resolving to ``{"event": "flight", "flight": Flight, "failed": record or None}`` once the lock
    is free; ``failed`` is a leader's failure recorded while this caller waited. ``flight`` is None if
    ``cancel`` is set first.
    """
    future: Future[dict[str, Any]] = Future()
    since = time.time()
    path = _lock_path(root, key)
    condition = _condition(path)

    def poll() -> None:
        while not cancel.is_set():
            flight = try_acquire(root, key)
            if flight is not None:
                failed = _read_failure(path, since)
                future.set_result({"event": "flight", "flight": flight, "failed": failed})
                return
            with condition:
                condition.wait(POLL)
        future.set_result({"event": "flight", "flight": None, "failed": None})

    threading.Thread(target=poll, name=f"nbmagic-flight-{key[:8]}", daemon=True).start()
    return future


def _read_failure(path: Path, since: float) -> dict[str, Any] | None:
    try:
        record = json.loads(path.with_suffix(".failed").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return record if record.get("at", 0) >= since else None
