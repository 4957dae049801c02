"""Content hashes of the files a step declares with ``--inputs``: taken where the pipeline is compiled or run,
and checked again inside the step's component, where the file may not exist at all."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


class MissingInput(Exception):
    """A declared ``--inputs`` file or folder does not exist here."""


def file_hashes(paths: tuple[str, ...] | list[str]) -> dict[str, str]:
    """path -> content hash of each file (a folder: every file under it, with its place); MissingInput if absent."""
    found: dict[str, str] = {}
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise MissingInput(name)
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
            digest.update(_file_hash(file).encode())
        found[name] = digest.hexdigest()
    return found


def _file_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes (sha256 without xxhash); read every time, so a rewrite is always seen."""
    try:
        import xxhash

        hasher: Any = xxhash.xxh3_128()
    except ImportError:
        hasher = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_files(expected: dict[str, str]) -> str | None:
    """Inside a component: the one-line problem when a declared file is missing or not the one compiled in."""
    for name, digest in expected.items():
        try:
            found = file_hashes([name])[name]
        except MissingInput:
            return (
                f"--inputs {name}: no such file or folder where the step runs (a file on the machine that compiled "
                "the pipeline is not in a cluster's pods: put it in the image or on a --volume at that path)"
            )
        if found != digest:
            return (
                f"--inputs {name} is not the file the pipeline was compiled with (its content changed): compile "
                "again, so the step's cache key follows the file"
            )
    return None
