"""In-place changes found while steps ran, kept so the next plan (and compiled YAML) passes the changed value on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..config import home

_reported: set[tuple[str, str]] = set()


def _path() -> Path:
    return home() / "learned.json"


def code_key(code: str) -> str:
    """Facts belong to a step's code: an edited cell is analysed afresh."""
    return hashlib.sha256(code.encode()).hexdigest()[:32]


def load() -> dict[str, list[str]]:
    """step code key -> variables that code was seen changing in place."""
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: list(v) for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}


def changed_in_place(code: str) -> list[str]:
    return load().get(code_key(code), [])


def remember(code: str, variables: list[str]) -> None:
    """Add ``variables`` to what ``code`` is known to change in place (owner-only file, replaced atomically)."""
    data = load()
    key = code_key(code)
    known = data.get(key, [])
    if set(variables) <= set(known):
        return
    data[key] = sorted(set(known) | set(variables))
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def report_once(step: str, variable: str, line: int | None, unsure: bool = False) -> str | None:
    """The one line telling the user a step changes a value in place, the first time it is seen; else None.

    ``unsure``: the value has no fingerprint, so the step may have changed it; it is passed on all the same."""
    if (step, variable) in _reported:
        return None
    _reported.add((step, variable))
    where = f" (line {line})" if line else ""
    if unsure:
        return (
            f"nbmagic: step {step!r} may change {variable} in place (it cannot be fingerprinted); "
            "later steps get its version"
        )
    return f"nbmagic: step {step!r} changes {variable} in place{where}; later steps get its version"
