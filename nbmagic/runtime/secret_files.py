"""The contents of ``--secret-file`` mounts present on this machine: secrets to keep out of the store and logs.

On a cluster Kubernetes mounts a secret as a folder holding one file per key; locally a step reads whatever is at
the mount path. Either way what the step can read there is a secret, as an injected ``--secret`` value is.
"""

from __future__ import annotations

import os

MAX_SIZE = 1 << 20  # a secret file larger than this is not a credential: its text is not looked for


def secret_file_values(paths: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The text of every file at or directly under ``paths`` (a file's text with and without surrounding space)."""
    found: dict[str, None] = {}
    for path in paths:
        for name in _files(path):
            try:
                if os.path.getsize(name) > MAX_SIZE:
                    continue
                with open(name, "rb") as handle:
                    text = handle.read().decode("utf-8", errors="replace")
            except OSError:
                continue
            for value in (text, text.strip()):
                if value:
                    found[value] = None
    return tuple(found)


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []
    # Kubernetes keeps each key as a link into a hidden "..data" folder: the keys are the visible names
    return [e.path for e in entries if not e.name.startswith(".") and os.path.isfile(e.path)]
