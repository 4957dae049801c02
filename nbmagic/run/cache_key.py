"""A step's cache key: what decides whether a stored result can stand in for running the step.

The local runner and interactive reuse (:mod:`nbmagic.run.reuse`) both call :func:`cache_key`, so a value the
kernel computed and a value a run computed are found under the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import NbMagicError
from ..pipeline.model import StepPlan


def _versions(modules: tuple[str, ...]) -> list[str]:
    from ..packages import pinned

    return pinned(modules)


def _local_sources(modules: tuple[str, ...]) -> dict[str, str]:
    """module -> hash of its source, for modules the step imports from the notebook's own files (not installed)."""
    import importlib.util

    found: dict[str, str] = {}
    for module in modules:
        if module in sys.stdlib_module_names or module in sys.builtin_module_names:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        origin = (spec.origin or "") if spec else ""
        if not origin or not os.path.isfile(origin) or "site-packages" in origin or "dist-packages" in origin:
            continue
        folders = list(spec.submodule_search_locations or [])
        files = sorted(str(p) for folder in folders for p in Path(folder).rglob("*.py")) if folders else [origin]
        digest = hashlib.sha256()
        for name in files:
            try:
                digest.update(name.encode() + b"\0" + Path(name).read_bytes())
            except OSError:
                continue
        found[module] = digest.hexdigest()
    return found


def file_hashes(paths: tuple[str, ...], step: str) -> dict[str, str]:
    """path -> content hash of each ``--inputs`` file (a folder: every file under it); a missing one is an error."""
    found: dict[str, str] = {}
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files = [path]
        else:
            raise NbMagicError(f"step {step!r} --inputs {name}: no such file or folder")
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


def cache_key(
    step: StepPlan, parameters: dict[str, Any], inputs: dict[str, str], after: dict[str, str] | None = None
) -> str:
    """What decides whether a step's stored result can be reused.

    ``after`` maps the steps this one runs ``--after`` to their own keys: those edges carry side effects (files),
    so a changed upstream step changes this one's key too.
    """
    settings = step.settings
    material = {
        "code": step.cell.code,
        "prelude": step.prelude,
        "parameters": {name: parameters[name] for name in step.parameters},
        "inputs": inputs,
        "after": after or {},
        "versions": _versions(step.modules),
        "local_modules": _local_sources(step.modules),
        "writes": list(step.writes),
        "metrics": list(step.metrics),
        "env": list(getattr(settings, "env", ()) or ()),
        "python": list(sys.version_info[:2]),
    }
    files = tuple(getattr(settings, "inputs", ()) or ())
    if files:  # only keys of steps that declare --inputs change
        material["files"] = file_hashes(files, step.name)
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
