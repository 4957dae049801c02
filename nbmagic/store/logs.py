"""Step logs: capped in size, head and tail kept, the cut marked."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "NBMAGIC_LOG_CAP"
DEFAULT_CAP = 50 * 10**6


def log_cap() -> int:
    """Bytes a step's log may keep: ``$NBMAGIC_LOG_CAP`` (e.g. ``10MB``), else 50 MB."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_CAP
    from .gc import parse_size

    return parse_size(text, f"${ENV}")


def cap_log(path: str | os.PathLike, cap: int | None = None) -> int:
    """Cut the log at ``path`` to its first and last ``cap / 2`` bytes with a marked cut; returns bytes cut."""
    cap = log_cap() if cap is None else cap
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size <= cap:
        return 0
    half = cap // 2
    cut = size - 2 * half
    marker = f"\n… [{cut} bytes cut: the step's log was over the {cap} byte cap (${ENV})] …\n".encode()
    tmp = path.with_name(path.name + ".cap")
    with open(path, "rb") as source, open(tmp, "wb") as target:
        target.write(source.read(half))
        target.write(marker)
        source.seek(size - half)
        target.write(source.read(half))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return cut
