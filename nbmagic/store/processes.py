"""Is a process that owns a run or a temp folder still there (and still the same process)?"""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (ended, not yet reaped) counts as gone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def identity(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from ``/proc``), or None where it cannot be read.

    A PID and its start time name one process for the life of the machine: a reused PID has another start time.
    """
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def same_process(pid: int, started: str | None) -> bool:
    """True while the process ``pid`` that had start time ``started`` still runs (a reused PID is not it)."""
    if not alive(pid):
        return False
    if started is None:
        return True
    now = identity(pid)
    return now is None or now == started
