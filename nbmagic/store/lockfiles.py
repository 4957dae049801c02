"""Lock files that are removed without a race: ``flock`` on a file, checked to still be the file at its path.

A lock file may be unlinked only by a process holding its lock. Everyone else, after getting a lock, checks
that the path still names the inode it locked: a process that opened the file just before it was unlinked
locks an orphaned inode, sees the mismatch and tries again with the new file. So two processes can never
both believe they hold the lock of one path.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

FLIGHTS_DIR = "flights"  # <store>/flights: single-flight locks of running steps and their leaders' failures
STALE_S = 3600.0  # a failure record or temp file this old has been read by every waiter it was for


def try_lock(path: Path, *, create: bool = True) -> int | None:
    """An open descriptor holding ``path``'s exclusive lock, or None if another process holds it (or, with
    ``create=False``, if there is no such file)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _names(path, fd):
            return fd
        os.close(fd)  # the holder unlinked it before we got the lock: ours is an orphan, start again
        if not create:
            return None


def _names(path: Path, fd: int) -> bool:
    try:
        seen = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (seen.st_dev, seen.st_ino) == (mine.st_dev, mine.st_ino)


def unlock(fd: int, path: Path, *, remove: bool = True) -> None:
    """Release the lock held on ``fd``; with ``remove``, unlink ``path`` first (while it is still held)."""
    try:
        if remove:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def sweep(folder: Path, pattern: str = "*.lock", older_than_s: float = 0.0) -> int:
    """Remove the lock files in ``folder`` nobody holds (each taken first, so a holder is never robbed)."""
    if not folder.is_dir():
        return 0
    removed, now = 0, time.time()
    for path in folder.glob(pattern):
        try:
            if now - path.stat().st_mtime < older_than_s:
                continue
        except FileNotFoundError:
            continue
        fd = try_lock(path, create=False)
        if fd is not None:
            unlock(fd, path)
            removed += 1
    return removed


def sweep_flights(root: Path) -> int:
    """Remove the single-flight lock files nobody holds and failure records and temp files over an hour old."""
    folder = Path(root) / FLIGHTS_DIR
    removed = sweep(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.iterdir():
        if path.suffix in (".failed", ".tmp"):
            try:
                if now - path.stat().st_mtime >= STALE_S:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed
