"""Typed marshalling: one value <-> a directory of data files plus ``manifest.json``.

Standard library only at module level: this package travels into compiled KFP components.
numpy, pandas, pyarrow, joblib, dill, torch, keras, xgboost and lightgbm are imported inside functions,
and a type-specific format is only considered when its library is already imported (an object cannot be an
``ndarray`` unless numpy is loaded), so choosing a format never imports anything heavy.

Formats, chosen by type, one module each:

=============  ===========================================================================
npy            numpy arrays (no pickling); object dtype goes to ``pickle``
npy-scalar     numpy scalars (a 0-d npy; loads back as a scalar of the same dtype)
parquet        pandas DataFrame/Series when pyarrow is present and the frame round-trips
pickle         plain Python values and containers of them (protocol 5, large buffers out of band),
               and pandas frames parquet cannot hold
joblib         scikit-learn estimators and other sklearn-like objects
torch          ``torch.nn.Module`` (``torch.save`` of the module and of its ``state_dict``), tensors
keras          Keras / TensorFlow models (native ``.keras`` file)
xgboost        XGBoost boosters and sklearn wrappers (native JSON model)
lightgbm       LightGBM boosters (native text model, ``model.bst``)
dill           everything else, with a :class:`MarshalWarning` naming the variable and type
=============  ===========================================================================

Integrity. ``manifest["hash"]`` covers the type, the format, format details and every data file
(name, size, per-file hash), so it identifies the value's content and is the key of the object store.
Files are hashed with xxh3-128 (~15 GB/s; the ``xxhash`` package) or, without it, BLAKE2b-192
(stdlib, ~1 GB/s); the manifest records which. See :func:`load` for how verification stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from . import dill, joblib, keras, lightgbm, npy, parquet, pickle, torch, xgboost
from .base import (
    DISK_FULL,
    MANIFEST,
    MMAP_THRESHOLD,
    SCHEMA,
    CorruptValue,
    MarshalError,
    MarshalWarning,
    Written,
    combined_hash,
    corrupt,
    hash_algorithm,
    hash_buffer,
    hash_file,
    type_name,
)

__all__ = [
    "DISK_FULL",
    "MANIFEST",
    "MMAP_THRESHOLD",
    "SCHEMA",
    "CorruptValue",
    "MarshalError",
    "MarshalWarning",
    "fingerprint",
    "load",
    "read_manifest",
    "save",
    "type_name",
    "verify",
]

# Live resources: pickling one (dill can) gives back a new, unrelated resource, so refuse them.
_LIVE = {
    "generator",
    "coroutine",
    "async_generator",
    "frame",
    "_thread.lock",
    "_thread.RLock",
    "_thread._local",
    "threading.Thread",
    "socket.socket",
    "ssl.SSLSocket",
    "_io.TextIOWrapper",
    "_io.BufferedReader",
    "_io.BufferedWriter",
    "_io.BufferedRandom",
    "_io.FileIO",
    "select.epoll",
    "mmap.mmap",
    "sqlite3.Connection",
    "sqlite3.Cursor",
    "subprocess.Popen",
    "multiprocessing.Process",
    "multiprocessing.context.Process",
    "multiprocessing.context.ForkProcess",
    "multiprocessing.context.SpawnProcess",
    "multiprocessing.pool.Pool",
    "asyncio.Task",
}

# format name -> reader(directory, meta, mmap); npy formats are read (and verified) by npy.read
_READERS: dict[str, Callable[[Path, dict, bool], Any]] = {
    m.FORMAT: m.read for m in (parquet, pickle, joblib, dill, torch, keras, xgboost, lightgbm)
}


def _value_type(obj: Any) -> str:
    """The type recorded in the manifest (a memory-mapped array is recorded as, and loads as, an ndarray)."""
    return "numpy.ndarray" if npy.is_ndarray(obj) else type_name(obj)


def _candidates(obj: Any, pandas_format: str) -> list[tuple[str, Callable[..., Written]]]:
    """Formats to try for obj, best first; dill is always the last resort."""
    if npy.is_ndarray(obj):
        return [(pickle.FORMAT, pickle.write)] if obj.dtype.hasobject else [(npy.FORMAT, npy.write)]
    if npy.is_scalar(obj):
        np = sys.modules["numpy"]
        if np.asarray(obj).dtype.hasobject:
            return [(pickle.FORMAT, pickle.write)]
        return [(npy.SCALAR_FORMAT, npy.write_scalar)]
    if parquet.claims(obj):
        try:
            table = parquet.table(obj) if pandas_format == "parquet" else None
        except Exception:  # noqa: BLE001 - any failure of the parquet path leaves the frame to pickle
            table = None
        if table is not None:
            return [
                (parquet.FORMAT, lambda o, d, a, n: parquet.write(o, d, a, n, table)),
                (pickle.FORMAT, pickle.write),
            ]
        return [(pickle.FORMAT, pickle.write)]
    for module in (keras, torch, xgboost, lightgbm, joblib, pickle):  # keras first: on torch a model is a Module too
        if module.claims(obj):
            return [(module.FORMAT, module.write)]
    return []


def _clear(directory: Path) -> None:
    for p in directory.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# -------------------------------------------------------------------------------------------- save


def save(obj: Any, directory: str | os.PathLike, name: str, *, pandas_format: str | None = None) -> dict:
    """Store obj in the existing empty ``directory`` and write ``manifest.json``; return the manifest.

    The format is chosen by type (see the module docstring); if it fails (e.g. a fitted pipeline holding a
    lambda), the next candidate is tried and dill is the last resort, with a :class:`MarshalWarning`.
    ``pandas_format``: "parquet" (default, or ``$NBMAGIC_PANDAS_FORMAT``) or "pickle" (faster, less portable).
    Raises :class:`MarshalError` naming the variable and its type when nothing can store the value.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MarshalError(f"cannot store variable {name!r}: {directory} is not a directory")
    if any(directory.iterdir()):
        raise MarshalError(f"cannot store variable {name!r}: {directory} is not empty")
    tname = _value_type(obj)
    if tname in _LIVE:
        raise MarshalError(
            f"cannot store variable {name!r} of type {tname}: "
            "it is a live resource (re-create it in the step that uses it)"
        )
    pandas_format = pandas_format or os.environ.get("NBMAGIC_PANDAS_FORMAT", "parquet")
    algorithm = hash_algorithm()
    attempts = _candidates(obj, pandas_format)
    attempts.append((dill.FORMAT, dill.write))
    errors: list[str] = []
    for fmt, writer in attempts:
        try:
            meta, versions, known = writer(obj, directory, algorithm, name)
            break
        except OSError as exc:
            _clear(directory)
            if exc.errno in DISK_FULL:
                raise  # no format can help: the caller reports the full filesystem
            errors.append(f"{fmt}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        except MarshalError:
            _clear(directory)
            raise  # the format claims the value and knows it cannot be stored: no fallback hides that
        except Exception as exc:  # noqa: BLE001 - any failure moves on to the next format
            errors.append(f"{fmt}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            _clear(directory)
    else:
        raise MarshalError(f"cannot store variable {name!r} of type {tname}: {errors[-1]}")
    if fmt == dill.FORMAT:
        warnings.warn(
            f"variable {name!r} of type {tname} has no dedicated format and is stored with dill; "
            "it may not load under other library versions",
            MarshalWarning,
            stacklevel=2,
        )
    files = []
    for p in sorted(directory.iterdir()):
        if not p.is_file():
            raise MarshalError(f"cannot store variable {name!r}: format {fmt} wrote a directory {p.name}")
        files.append(
            {"path": p.name, "size": p.stat().st_size, "hash": known.get(p.name) or hash_file(p, algorithm, name)}
        )
    manifest = {
        "schema": SCHEMA,
        "name": name,
        "type": tname,
        "format": fmt,
        "files": files,
        "size": sum(f["size"] for f in files),
        "hash": combined_hash(algorithm, tname, fmt, meta, files, name),
        "hash_algorithm": algorithm,
        "meta": meta,
        "versions": versions,
        "python": "%d.%d.%d" % sys.version_info[:3],
    }
    with open(directory / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def fingerprint(obj: Any, name: str = "value") -> str | None:
    """The hash :func:`save` would record for obj, when it can be computed without writing (numpy), else None.

    Lets a content-addressed store skip writing a value it already holds.
    """
    if npy.is_ndarray(obj) and not obj.dtype.hasobject:
        fmt, arr = npy.FORMAT, obj
    elif npy.is_scalar(obj):
        import numpy as np

        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            return None
        fmt = npy.SCALAR_FORMAT
    else:
        return None
    algorithm = hash_algorithm()
    header, data = npy.parts(arr)
    files = [{"path": npy.FILE, "size": len(header) + data.nbytes, "hash": hash_buffer(algorithm, name, header, data)}]
    return combined_hash(algorithm, _value_type(obj), fmt, {}, files, name)


# -------------------------------------------------------------------------------------------- load


def read_manifest(directory: str | os.PathLike, name: str | None = None) -> dict:
    """The manifest of a stored value (MarshalError if missing or unreadable)."""
    path = Path(directory) / MANIFEST
    try:
        with open(path) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or "format" not in manifest or "files" not in manifest:
            raise ValueError("not a value manifest")
    except (OSError, ValueError) as exc:
        raise MarshalError(
            f"cannot load stored value {name or str(directory)!r}: manifest unreadable ({type(exc).__name__})"
        ) from None
    return manifest


def verify(directory: str | os.PathLike, name: str | None = None, *, expected_hash: str | None = None) -> dict:
    """Check a stored value's manifest and every file's hash without loading it; return the manifest.

    Raises :class:`CorruptValue` naming the value when anything does not match.
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory, name)
    except MarshalError as exc:
        raise CorruptValue(str(exc)) from None
    name = name or manifest.get("name") or str(directory)
    if expected_hash is not None and manifest.get("hash") != expected_hash:
        raise corrupt(name, f"manifest hash is not {expected_hash[:12]}... (altered or misplaced)")
    try:
        _check_layout(directory, manifest, name)
        for entry in manifest["files"]:
            _verify_file(directory, entry, manifest["hash_algorithm"], name)
    except CorruptValue:
        raise
    except (KeyError, TypeError, MarshalError) as exc:
        raise corrupt(name, f"manifest unusable ({type(exc).__name__})") from None
    return manifest


def _check_layout(directory: Path, manifest: dict, name: str) -> None:
    """Manifest self-consistency, file names, sizes (truncation shows up here, before any hashing)."""
    algorithm = manifest.get("hash_algorithm", "")
    files = manifest["files"]
    for f in files:
        p = f.get("path", "")
        if not p or "/" in p or "\\" in p or p in (".", "..", MANIFEST):
            raise corrupt(name, f"bad file name {p!r} in manifest")
        try:
            size = (directory / p).stat().st_size
        except OSError:
            raise corrupt(name, f"file {p} is missing") from None
        if size != f["size"]:
            raise corrupt(name, f"file {p} is {size} bytes, expected {f['size']} (truncated or altered)")
    want = combined_hash(algorithm, manifest.get("type", ""), manifest["format"], manifest.get("meta", {}), files, name)
    if want != manifest.get("hash"):
        raise corrupt(name, "manifest does not match its hash (altered)")


def _verify_file(directory: Path, entry: dict, algorithm: str, name: str) -> None:
    if hash_file(directory / entry["path"], algorithm, name) != entry["hash"]:
        raise corrupt(name, f"file {entry['path']} does not match its hash (altered)")


def load(
    directory: str | os.PathLike,
    name: str | None = None,
    mmap: bool = True,
    *,
    expected_hash: str | None = None,
    mmap_threshold: int | None = None,
) -> Any:
    """Load the value stored in ``directory``, verifying every byte against the manifest's hash.

    A truncated, altered or missing file raises :class:`MarshalError` naming the value; wrong data is never
    returned. How verification stays cheap: sizes and the manifest's own hash are checked first (catching
    truncation without reading data); then each file is hashed with xxh3-128 (~15 GB/s) through a memory map,
    so the check costs a fraction of the read itself. A numpy array of at least ``MMAP_THRESHOLD`` bytes
    (with ``mmap=True``) is hashed through the very copy-on-write mapping that backs the returned array:
    one pass over the page cache, no copy, and edits to the array never reach the stored file. Smaller arrays
    (or ``mmap=False``) are read into fresh memory in 8 MiB pieces, each hashed as it arrives (verify while
    reading: one copy, and the hash reads data that is still in the CPU cache). Other formats hash each file
    (through a map) and then let their library read it, which then hits the page cache.
    ``expected_hash`` (e.g. the key in a content-addressed store) must equal the manifest's hash.
    ``mmap_threshold`` replaces ``MMAP_THRESHOLD`` for this load.
    """
    directory = Path(directory)
    manifest = read_manifest(directory, name)
    name = name or manifest.get("name") or str(directory)
    if expected_hash is not None and manifest.get("hash") != expected_hash:
        raise corrupt(name, f"manifest hash is not {expected_hash[:12]}... (altered or misplaced)")
    _check_layout(directory, manifest, name)
    fmt, meta = manifest["format"], manifest.get("meta", {})
    algorithm = manifest["hash_algorithm"]
    if fmt in (npy.FORMAT, npy.SCALAR_FORMAT):
        entry = manifest["files"][0]
        arr = npy.read(
            directory / entry["path"], entry["hash"], algorithm, name, mmap and fmt == npy.FORMAT, mmap_threshold
        )
        return arr[()] if fmt == npy.SCALAR_FORMAT else arr
    for entry in manifest["files"]:
        _verify_file(directory, entry, algorithm, name)
    try:
        return _READERS[fmt](directory, meta, mmap)
    except KeyError:
        raise MarshalError(f"cannot load stored value {name!r}: unknown format {fmt!r}") from None
    except MarshalError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a missing library or class: one clear line
        raise MarshalError(
            f"cannot load stored value {name!r} of type {manifest.get('type')} "
            f"({fmt}): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
