"""Which process drives a local study: ``<study>.owner`` in the store names it (kernel, PID, start time).

A second process asking for the same study gets one line naming the owner; an owner whose PID is gone, or
now belongs to a process started at another time (PID reuse), is dead, and its study can be taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..store.processes import identity, same_process
from .space import TuneError


def alive(owner: dict[str, Any]) -> bool:
    """The recorded owner is still the same running process (same host, PID and start time)."""
    if owner.get("host") != socket.gethostname():
        return True  # another machine: cannot tell, assume it is alive
    pid = owner.get("pid")
    return isinstance(pid, int) and same_process(pid, owner.get("start"))


def describe(owner: dict[str, Any]) -> str:
    return f"{owner.get('kernel') or 'a process'} (PID {owner.get('pid')} on {owner.get('host')})"


def _me() -> dict[str, Any]:
    kernel = os.environ.get("JPY_SESSION_NAME") or ""
    try:  # the kernel's connection file names the kernel
        from ipykernel.connect import get_connection_file

        kernel = f"kernel {Path(get_connection_file()).stem.removeprefix('kernel-')}" + (
            f" ({kernel})" if kernel else ""
        )
    except Exception:  # noqa: BLE001 - not in a kernel
        kernel = kernel or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:2]))
    pid = os.getpid()
    return {"pid": pid, "start": identity(pid), "host": socket.gethostname(), "kernel": kernel, "at": time.time()}


class StudyLock:
    """Own ``study`` (its path without suffix) for this process; ``release()`` when the experiment ends."""

    def __init__(self, study: Path, name: str) -> None:
        self.path = study.with_suffix(".owner")
        self.name = name
        self.owner: dict[str, Any] | None = None

    def acquire(self) -> StudyLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(self.path.with_suffix(".guard"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one process at a time reads and writes the owner
            current = read_owner(self.path)
            me = _me()
            if current and current.get("pid") != me["pid"] and alive(current):
                raise TuneError(
                    f"experiment {self.name!r} is running in {describe(current)}: stop it there or wait for it "
                    f"to end; %katib --watch {self.name} follows it read-only (a new --name starts a separate study)"
                )
            tmp = self.path.with_suffix(f".owner.{me['pid']}.tmp")
            tmp.write_text(json.dumps(me))
            os.replace(tmp, self.path)
            self.owner = me
        finally:
            os.close(guard)
        return self

    def release(self) -> None:
        if self.owner is None:
            return
        current = read_owner(self.path)
        if current and current.get("pid") == self.owner["pid"] and current.get("start") == self.owner["start"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.owner = None


def read_owner(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
