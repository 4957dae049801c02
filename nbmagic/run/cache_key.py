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
    """Pinned versions of the distributions behind ``modules``, as :func:`nbmagic.packages.pinned` gives them.

    Finding which distribution provides a module reads every installed package's metadata (about a second,
    once per process). The answers are kept in ``$NBMAGIC_HOME/cache/versions.json`` together with the names of
    the distributions' metadata folders on ``sys.path``: installing, removing or upgrading a package changes
    those names (they carry the version), and then everything is looked up again.
    """
    key = ",".join(modules)
    stamp = _path_stamp()
    known = _PINS.get((stamp, key))
    if known is not None:  # looked up (or read from the file) before in this process, nothing installed since
        return list(known)
    memo = _read_memo()
    if memo.get("stamp") == stamp and key in memo.get("pins", {}):
        _PINS[(stamp, key)] = list(memo["pins"][key])
        return list(memo["pins"][key])
    from ..packages import pinned  # imports packaging: only on a miss

    found = pinned(modules)
    _PINS[(stamp, key)] = list(found)
    pins = memo.get("pins", {}) if memo.get("stamp") == stamp else {}
    pins[key] = found
    _write_memo({"stamp": stamp, "pins": pins})
    return found


_PINS: dict[tuple[str, str], list[str]] = {}  # (path stamp, modules) -> pins, so the file is read once per process
_LISTED: dict[str, tuple[int, list[str]]] = {}  # sys.path entry -> (its mtime, its distribution folders)


def _path_stamp() -> str:
    """The installed distributions' folder names (they carry the versions) on every ``sys.path`` entry.

    A folder is listed again only when its modification time changed (adding, removing or renaming a
    distribution's folder changes it); listing site-packages costs milliseconds per step otherwise.
    """
    digest = hashlib.sha256()
    for entry in sys.path:
        digest.update(entry.encode() + b"\0")
        folder = os.path.abspath(entry or ".")
        try:
            mtime = os.stat(folder).st_mtime_ns
            known = _LISTED.get(folder)
            if known is None or known[0] != mtime:
                with os.scandir(folder) as found:
                    names = sorted(e.name for e in found if e.name.endswith((".dist-info", ".egg-info", ".egg-link")))
                _LISTED[folder] = known = (mtime, names)
        except OSError:
            continue
        digest.update("\0".join(known[1]).encode() + b"\1")
    return digest.hexdigest()


def _memo_path() -> Path:
    from ..config import home

    return home() / "cache" / "versions.json"


def _read_memo() -> dict[str, Any]:
    try:
        data = json.loads(_memo_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(data: dict[str, Any]) -> None:
    path = _memo_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # only a shortcut: the next call looks the versions up again


def environment(modules: tuple[str, ...]) -> dict[str, Any]:
    """What a step runs with (as :func:`nbmagic.store.lineage.environment` records it), from the same pins."""
    import platform

    packages = dict(p.partition("==")[::2] for p in _versions(tuple(sorted(set(modules))))) if modules else {}
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


def local_files(modules: tuple[str, ...]) -> dict[str, list[str]]:
    """module -> its source files and those of the local modules they import (followed transitively), for modules
    the step imports from the notebook's own files (not installed)."""
    found: dict[str, list[str]] = {}
    for module in modules:
        each = local_modules((module,))
        if module in each:
            found[module] = sorted({name for files in each.values() for name in files})
    return found


LOCAL_LIMIT = 256  # local modules followed from one step's imports


def local_modules(modules: tuple[str, ...]) -> dict[str, list[str]]:
    """Every local module reached from ``modules`` through the import statements of local files -> its files.

    A local module is one found outside the standard library and site-packages; its files' imports (statements,
    and ``importlib.import_module``/``__import__`` calls with a constant name) are read with :mod:`ast` (not run)
    and followed, up to :data:`LOCAL_LIMIT` modules."""
    return _follow(modules)[0]


def local_unsure(modules: tuple[str, ...]) -> str | None:
    """Why the local modules ``modules`` reach cannot all be known (a module named at run time, too many), or None."""
    return _follow(modules)[1]


def _follow(modules: tuple[str, ...]) -> tuple[dict[str, list[str]], str | None]:
    found: dict[str, list[str]] = {}
    unsure: str | None = None
    todo = list(dict.fromkeys(modules))
    looked: set[str] = set()
    while todo:
        module = todo.pop(0)
        if module in looked:
            continue
        if len(looked) >= LOCAL_LIMIT:
            unsure = unsure or f"it imports more than {LOCAL_LIMIT} local modules, too many to follow"
            break
        looked.add(module)
        files = _module_files(module)
        if not files:
            continue
        found[module] = files
        for name in files:
            names, dynamic = _imported(name)
            if dynamic and unsure is None:
                unsure = f"{name} imports a module named at run time, which cannot be followed"
            todo.extend(m for m in names if m not in looked)
    return found, unsure


def _module_files(module: str) -> list[str]:
    """The source files of ``module`` when it is local (a package, namespace packages too: every ``.py`` under
    it), else none."""
    import importlib.util

    if module in sys.stdlib_module_names or module in sys.builtin_module_names:
        return []
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    folders = [str(f) for f in (spec.submodule_search_locations or [])]
    origin = spec.origin or ""
    if origin in ("", "namespace") and folders:  # a folder without __init__.py
        if any(_installed(folder) for folder in folders):
            return []
        return sorted(str(p) for folder in folders for p in Path(folder).rglob("*.py"))
    if not origin or not os.path.isfile(origin) or _installed(origin):
        return []
    return sorted(str(p) for folder in folders for p in Path(folder).rglob("*.py")) if folders else [origin]


def _installed(path: str) -> bool:
    import sysconfig

    if "site-packages" in path or "dist-packages" in path:
        return True
    stdlib = sysconfig.get_paths().get("stdlib") or ""
    return bool(stdlib) and os.path.abspath(path).startswith(os.path.abspath(stdlib) + os.sep)


_IMPORTS: dict[str, tuple[tuple[int, int], list[str], bool]] = {}  # file -> (stamp, names, imports by a variable)
_DYNAMIC = {"import_module", "__import__"}


def _imported(path: str) -> tuple[list[str], bool]:
    """Top-level names of the modules a source file imports (absolute imports; relative ones stay in its package;
    ``import_module("x")``/``__import__("x")`` calls), and whether it imports a module named at run time."""
    import ast

    try:
        stat = os.stat(path)
    except OSError:
        return [], False
    stamp = (stat.st_mtime_ns, stat.st_size)
    known = _IMPORTS.get(path)
    if known is not None and known[0] == stamp:
        return known[1], known[2]
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return [], False
    names: dict[str, None] = {}
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(dict.fromkeys(alias.name.split(".")[0] for alias in node.names))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names[node.module.split(".")[0]] = None
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if called in _DYNAMIC:
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
                    names[first.value.split(".")[0]] = None
                elif not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    dynamic = True  # a relative constant name stays in its package, followed with it
    _IMPORTS[path] = (stamp, list(names), dynamic)
    return list(names), dynamic


def _local_sources(modules: tuple[str, ...]) -> dict[str, str]:
    """module -> hash of its source, for modules the step imports from the notebook's own files (not installed)."""
    found: dict[str, str] = {}
    for module, files in local_files(modules).items():
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
    from ..runtime.files import MissingInput
    from ..runtime.files import file_hashes as hashes

    try:
        return hashes(paths)
    except MissingInput as missing:
        raise NbMagicError(f"step {step!r} --inputs {missing}: no such file or folder") from None


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
        # a module named at run time cannot be followed: a key never found again (the step runs each time)
        **({"unsure": os.urandom(16).hex()} if local_unsure(step.modules) else {}),
        "writes": list(step.writes),
        "metrics": list(step.metrics),
        "env": list(getattr(settings, "env", ()) or ()),
        "python": list(sys.version_info[:2]),
    }
    files = tuple(getattr(settings, "inputs", ()) or ())
    if files:  # only keys of steps that declare --inputs change
        material["files"] = file_hashes(files, step.name)
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
