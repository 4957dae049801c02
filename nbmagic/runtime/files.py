"""Content hashes of the files a step declares with ``--inputs``: taken where the pipeline is compiled or run,
and checked again inside the step's component, where the file may not exist at all."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


class MissingInput(Exception):
    """A declared ``--inputs`` file or folder does not exist here."""


def file_hashes(paths: tuple[str, ...] | list[str], algorithm: str | None = None) -> dict[str, str]:
    """path -> ``"<algorithm>:<hex>"`` content hash of each file (a folder: every file under it, with its place);
    MissingInput if absent. ``algorithm``: ``xxh3`` or ``sha256`` (default: xxh3 where xxhash is installed), named
    in the digest so hashes taken on different machines are never compared as if alike."""
    algorithm = algorithm or default_algorithm()
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
            digest.update(_file_hash(file, algorithm).encode())
        found[name] = f"{algorithm}:{digest.hexdigest()}"
    return found


def default_algorithm() -> str:
    """``xxh3`` where xxhash is installed, else ``sha256``."""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "sha256"
    return "xxh3"


def _file_hash(path: Path, algorithm: str) -> str:
    """The file's bytes hashed with ``algorithm``; read every time, so a rewrite is always seen."""
    if algorithm == "xxh3":
        import xxhash

        hasher: Any = xxhash.xxh3_128()
    else:
        hasher = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_files(expected: dict[str, str]) -> str | None:
    """Inside a component: the one-line problem when a declared file is missing or not the one compiled in."""
    for name, digest in expected.items():
        algorithm = digest.partition(":")[0] if ":" in digest else "unknown"
        if algorithm not in ("xxh3", "sha256"):
            return f"--inputs {name}: its compiled hash names no known algorithm ({algorithm}): compile again"
        if algorithm == "xxh3" and default_algorithm() != "xxh3":
            return (
                f"--inputs {name} cannot be checked here: it was hashed with xxh3 and this image has no xxhash "
                "(install xxhash in the image)"
            )
        try:
            found = file_hashes([name], algorithm)[name]
        except MissingInput:
            where = "" if Path(name).expanduser().is_absolute() else f" (relative to {Path.cwd()})"
            return (
                f"--inputs {name}: no such file or folder where the step runs{where}: a file on the machine that "
                "compiled the pipeline is not in a cluster's pods: put it in the image or on a --volume at that path"
            )
        if found != digest:
            return (
                f"--inputs {name} is not the file the pipeline was compiled with (its content changed): compile "
                "again, so the step's cache key follows the file"
            )
    return None
