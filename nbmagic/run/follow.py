"""Print steps' log lines as they are written, each prefixed with its step's name (``nbmagic run``)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO


class LogFollower:
    """One thread per running step, tailing its log file until the step ends."""

    def __init__(self, out: TextIO | None = None, interval: float = 0.1) -> None:
        self.out = out or sys.stdout
        self.interval = interval
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()

    def start(self, step: str, log: Path) -> None:
        if step in self._threads:
            return
        done = threading.Event()
        thread = threading.Thread(target=self._tail, args=(step, log, done), daemon=True)
        self._threads[step] = (thread, done)
        thread.start()

    def stop(self, step: str) -> None:
        """The step ended: print what is left of its log, then stop following it."""
        entry = self._threads.pop(step, None)
        if entry is not None:
            entry[1].set()
            entry[0].join(timeout=5)

    def stop_all(self) -> None:
        for step in list(self._threads):
            self.stop(step)

    def _tail(self, step: str, log: Path, done: threading.Event) -> None:
        offset = log.stat().st_size if log.exists() else 0  # a retried step's log goes on from here
        pending = ""
        while True:
            finished = done.is_set()
            try:
                with open(log, encoding="utf-8", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
            except FileNotFoundError:
                chunk = ""
            pending += chunk
            *lines, pending = pending.split("\n")
            if finished and pending:
                lines.append(pending)
            if lines:
                with self._lock:
                    for line in lines:
                        self.out.write(f"[{step}] {line}\n")
                    self.out.flush()
            if finished:
                return
            done.wait(self.interval)
