"""Whether a process still runs, read from /proc (Linux), for tests that check what a kernel or server leaves."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """True while ``pid`` runs: it has a /proc entry and is no zombie (ended, not yet reaped) nor dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
