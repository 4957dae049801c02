"""Typed marshalling: one value <-> a directory of data files plus ``manifest.json``.

Standard library only at module level: this source is embedded into compiled KFP components.
numpy, pandas, pyarrow, joblib, dill, torch, keras, xgboost and lightgbm are imported inside functions,
and a type-specific format is only considered when its library is already imported (an object cannot be an
``ndarray`` unless numpy is loaded), so choosing a format never imports anything heavy.

Formats, chosen by type:

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

import hashlib
import io
import json
import mmap as _mmap
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"
SCHEMA = 1
MMAP_THRESHOLD = 64 << 20  # arrays at least this large load memory-mapped when mmap=True
_ALIGN = 64  # out-of-band pickle buffers start on 64-byte boundaries
_CHUNK = 8 << 20  # I/O in 8 MiB pieces: one huge read/write stalls on page faults on a busy machine
_PLAIN_LIMIT = 1_000_000  # containers: elements inspected before giving up on "plain"


class MarshalError(ValueError):
    """A value could not be stored or loaded; the one-line message names the variable and type."""


class CorruptValue(MarshalError):
    """A stored value's bytes do not match its manifest (altered, truncated or missing files)."""


#: errno values meaning "the filesystem has no room": :func:`save` re-raises these OSErrors unchanged
DISK_FULL = frozenset({28, 122, 27})  # ENOSPC, EDQUOT, EFBIG


class MarshalWarning(UserWarning):
    """A value was stored with the dill fallback."""


# ----------------------------------------------------------------------------------------- hashing


def _hash_algorithm() -> str:
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b-192"
    return "xxh3-128"


def _hasher(algorithm: str, name: str) -> Any:
    if algorithm == "xxh3-128":
        try:
            import xxhash
        except ImportError:
            raise MarshalError(
                f"cannot verify stored value {name!r}: its hash is xxh3-128, install the 'xxhash' package"
            ) from None
        return xxhash.xxh3_128()
    if algorithm == "blake2b-192":
        return hashlib.blake2b(digest_size=24)
    raise MarshalError(f"cannot verify stored value {name!r}: unknown hash algorithm {algorithm!r}")


def _hash_buffer(algorithm: str, name: str, *parts: Any) -> str:
    h = _hasher(algorithm, name)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _hash_file(path: Path, algorithm: str, name: str) -> str:
    """Hash a file through a read-only memory map (page-cache speed, no copy)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return _hash_buffer(algorithm, name, b"")
        with _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) as mm:
            return _hash_buffer(algorithm, name, mm)


def _combined_hash(algorithm: str, type_name: str, fmt: str, meta: dict, files: list[dict], name: str) -> str:
    """The value's hash: type, format, format details and every file's name, size and hash."""
    head = json.dumps(
        {
            "schema": SCHEMA,
            "type": type_name,
            "format": fmt,
            "meta": meta,
            "files": [[f["path"], f["size"], f["hash"]] for f in files],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return _hash_buffer(algorithm, name, head.encode())


# ------------------------------------------------------------------------------------ type helpers


def type_name(obj: Any) -> str:
    """Qualified type name: ``int``, ``numpy.ndarray``, ``sklearn.linear_model._base.LinearRegression``."""
    t = type(obj)
    module = getattr(t, "__module__", None) or ""
    qual = getattr(t, "__qualname__", t.__name__)
    return qual if module == "builtins" else f"{module}.{qual}"


def _value_type(obj: Any) -> str:
    """The type recorded in the manifest (a memory-mapped array is recorded as, and loads as, an ndarray)."""
    return "numpy.ndarray" if _is_ndarray(obj) else type_name(obj)


def _mods(obj: Any) -> list[str]:
    return [getattr(c, "__module__", "") or "" for c in type(obj).__mro__]


def _version(module_name: str) -> str | None:
    mod = sys.modules.get(module_name)
    return getattr(mod, "__version__", None) if mod is not None else None


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for n in names:
        v = _version(n)
        if v is not None:
            out[n] = str(v)
    return out


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(obj) in (np.ndarray, np.memmap)


def _is_npscalar(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.generic) and type(obj).__module__ == "numpy"


def _is_pandas(obj: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and type(obj) in (pd.DataFrame, pd.Series)


_PLAIN_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, slice)
_PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict)
_STDLIB_LEAVES = {
    "datetime.datetime",
    "datetime.date",
    "datetime.time",
    "datetime.timedelta",
    "datetime.timezone",
    "decimal.Decimal",
    "fractions.Fraction",
    "uuid.UUID",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "pathlib.Path",
    "collections.OrderedDict",
    "collections.Counter",
    "collections.deque",
    "bytearray",
}


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


def _is_plain(obj: Any) -> bool:
    """Plain values and containers of them (numpy/pandas values allowed inside containers)."""
    stack, seen, budget = [obj], set(), _PLAIN_LIMIT
    while stack:
        x = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        t = type(x)
        if t in _PLAIN_ATOMS:
            continue
        if t in _PLAIN_CONTAINERS or type_name(x) in (
            "collections.OrderedDict",
            "collections.Counter",
            "collections.deque",
        ):
            if id(x) in seen:
                continue
            seen.add(id(x))
            stack.extend(x.keys() if isinstance(x, dict) else ())
            stack.extend(x.values() if isinstance(x, dict) else x)
            continue
        if type_name(x) in _STDLIB_LEAVES or (
            x is not obj and (_is_ndarray(x) or _is_npscalar(x) or _is_pandas(x) or _is_sklearn(x))
        ):
            continue
        return False
    return True


def _is_sklearn(obj: Any) -> bool:
    t = type(obj)
    return t.__module__ != "__main__" and any(m == "sklearn" or m.startswith("sklearn.") for m in _mods(obj))


def _is_estimator(obj: Any) -> bool:
    """scikit-learn estimators and sklearn-like objects (fit + predict/transform + get_params)."""
    t = type(obj)
    if t.__module__ == "__main__":
        return False
    if _is_sklearn(obj):
        return True
    has = lambda attr: callable(getattr(t, attr, None))  # noqa: E731
    return has("fit") and has("get_params") and (has("predict") or has("transform"))


def _mro_has(obj: Any, prefixes: tuple[str, ...], names: tuple[str, ...]) -> bool:
    for c in type(obj).__mro__:
        mod = getattr(c, "__module__", "") or ""
        if c.__name__ in names and mod.startswith(prefixes):
            return True
    return False


def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, (torch.nn.Module, torch.Tensor))


def _is_keras(obj: Any) -> bool:
    if not any(m in sys.modules for m in ("keras", "tensorflow", "tf_keras")):
        return False
    return _mro_has(obj, ("keras", "tf_keras", "tensorflow"), ("Model",))


def _is_xgboost(obj: Any) -> bool:
    return "xgboost" in sys.modules and _mro_has(obj, ("xgboost",), ("Booster", "XGBModel"))


def _is_lightgbm(obj: Any) -> bool:
    return "lightgbm" in sys.modules and _mro_has(obj, ("lightgbm",), ("Booster",))


def _resolve(qualified: str) -> Any:
    import importlib

    module, _, qual = qualified.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------ writers
# A writer stores obj into directory and returns (meta, versions, precomputed file hashes).
Written = "tuple[dict, dict[str, str], dict[str, str]]"


def _npy_parts(arr: Any) -> tuple[bytes, memoryview]:
    """The exact bytes numpy writes to a .npy file: header, then the data in memory order."""
    import numpy as np

    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
    fmt = np.lib.format
    d = fmt.header_data_from_array_1_0(arr)
    buf = io.BytesIO()
    try:
        fmt.write_array_header_1_0(buf, d)
    except ValueError:
        buf = io.BytesIO()
        fmt.write_array_header_2_0(buf, d)
    flat = (arr.T if d["fortran_order"] else arr).reshape(-1)
    data = memoryview(flat.view(np.uint8)) if flat.dtype.itemsize else memoryview(b"")
    return buf.getvalue(), data


def _write_chunks(f: Any, data: memoryview, h: Any = None) -> None:
    """Write data in pieces, hashing each piece while it is still in the CPU cache."""
    for o in range(0, data.nbytes, _CHUNK):
        part = data[o : o + _CHUNK]
        f.write(part)
        if h is not None:
            h.update(part)


def _read_chunks(f: Any, data: memoryview, h: Any = None) -> int:
    """readinto data in pieces (hashing each); returns the bytes read."""
    got = 0
    while got < data.nbytes:
        n = f.readinto(data[got : got + _CHUNK])
        if not n:
            break
        if h is not None:
            h.update(data[got : got + n])
        got += n
    return got


def _write_npy(arr: Any, directory: Path, algorithm: str, name: str) -> str:
    header, data = _npy_parts(arr)
    h = _hasher(algorithm, name)
    h.update(header)
    with open(directory / "value.npy", "wb") as f:
        f.write(header)
        _write_chunks(f, data, h)
    return h.hexdigest()


def _w_npy(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    h = _write_npy(obj, directory, algorithm, name)
    return {}, _versions("numpy"), {"value.npy": h}


def _w_npy_scalar(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import numpy as np

    h = _write_npy(np.asarray(obj), directory, algorithm, name)
    return {}, _versions("numpy"), {"value.npy": h}


def _parquet_table(obj: Any) -> Any:
    """An Arrow table for obj if parquet will give back an equal frame, else None."""
    import pandas as pd

    try:
        import pyarrow as pa
    except ImportError:
        return None
    df = obj.to_frame(name="__value__") if isinstance(obj, pd.Series) else obj
    if isinstance(obj, pd.Series) and not (obj.name is None or isinstance(obj.name, str)):
        return None
    if (
        not all(isinstance(c, str) for c in df.columns)
        or not df.columns.is_unique
        or obj.attrs
        or not obj.flags.allows_duplicate_labels
        or not isinstance(df.columns, pd.Index)
        or type(df.columns) is not pd.Index
    ):
        return None
    try:
        table = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    for field in table.schema:
        if pa.types.is_nested(field.type):
            return None
    # Check on both ends of the frame that Arrow gives back equal values, dtypes and index.
    range_index = type(df.index) is pd.RangeIndex
    k = min(len(df), 256)
    for start in sorted({0, max(len(df) - k, 0)}):
        try:
            back = table.slice(start, k).to_pandas()
        except (pa.ArrowException, TypeError, ValueError):
            return None
        want = df.iloc[start : start + k]
        if range_index:
            want, back = want.reset_index(drop=True), back.reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(back, want, check_exact=True, check_freq=False)
        except (AssertionError, TypeError, ValueError):
            return None
    return table


def _w_parquet(obj: Any, directory: Path, algorithm: str, name: str, table: Any) -> Written:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dict_cols = [
        f.name
        for f in table.schema
        if not (
            pa.types.is_floating(f.type)
            or pa.types.is_integer(f.type)
            or pa.types.is_boolean(f.type)
            or pa.types.is_temporal(f.type)
        )
    ]
    pq.write_table(
        table,
        directory / "value.parquet",
        compression="none",
        use_dictionary=dict_cols,
        write_statistics=False,
        data_page_size=8 << 20,
    )
    meta = {"series": type(obj).__name__ == "Series"}
    if meta["series"]:
        meta["series_name"] = obj.name
    return meta, _versions("pandas", "pyarrow"), {}


def _w_pickle(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    """Pickle protocol 5 with large buffers (numpy/pandas data) written raw and aligned to buffers.bin."""
    buffers: list[pickle.PickleBuffer] = []
    with open(directory / "value.pkl", "wb") as f:
        pickle.dump(obj, f, protocol=5, buffer_callback=buffers.append)
    meta: dict = {}
    if buffers:
        spans, offset = [], 0
        with open(directory / "buffers.bin", "wb") as f:
            for b in buffers:
                raw = b.raw()
                pad = -offset % _ALIGN
                if pad:
                    f.write(b"\0" * pad)
                    offset += pad
                _write_chunks(f, raw)
                spans.append([offset, raw.nbytes])
                offset += raw.nbytes
        meta["buffers"] = spans
    return meta, _versions("numpy", "pandas", "sklearn"), {}


def _w_joblib(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import joblib

    joblib.dump(obj, directory / "value.joblib")
    root = type(obj).__module__.split(".")[0]
    return {}, _versions("joblib", "sklearn", "numpy", root), {}


def _w_dill(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import dill

    try:
        with open(directory / "value.dill", "wb") as f:
            dill.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL, recurse=True)
    except Exception:  # noqa: BLE001 - recurse=True fails on some objects where the default works
        with open(directory / "value.dill", "wb") as f:
            dill.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {}, _versions("dill"), {}


def _w_torch(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import torch

    if isinstance(obj, torch.Tensor):
        torch.save(obj, directory / "tensor.pt")
        return {"kind": "tensor"}, _versions("torch"), {}
    meta: dict = {"kind": "module"}
    if type(obj).__module__ == "__main__":  # a notebook-defined class: keep it by value
        import dill

        torch.save(obj, directory / "module.pt", pickle_module=dill)
        meta["pickle_module"] = "dill"
    else:
        torch.save(obj, directory / "module.pt")
    torch.save(obj.state_dict(), directory / "state_dict.pt")
    return meta, _versions("torch", "dill"), {}


def _w_keras(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save(str(directory / "model.keras"))
    return {}, _versions("keras", "tensorflow"), {}


def _w_xgboost(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save_model(str(directory / "model.json"))
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}, _versions("xgboost"), {}


def _w_lightgbm(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save_model(str(directory / "model.bst"))
    return {}, _versions("lightgbm"), {}


def _candidates(obj: Any, pandas_format: str) -> list[tuple[str, Callable[..., Written]]]:
    """Formats to try for obj, best first; dill is always the last resort."""
    np = sys.modules.get("numpy")
    if _is_ndarray(obj):
        return [("pickle", _w_pickle)] if obj.dtype.hasobject else [("npy", _w_npy)]
    if _is_npscalar(obj):
        return [("npy-scalar", _w_npy_scalar)] if not np.asarray(obj).dtype.hasobject else [("pickle", _w_pickle)]
    if _is_pandas(obj):
        table = _parquet_table(obj) if pandas_format == "parquet" else None
        if table is not None:
            return [("parquet", lambda o, d, a, n: _w_parquet(o, d, a, n, table)), ("pickle", _w_pickle)]
        return [("pickle", _w_pickle)]
    if _is_torch(obj):
        return [("torch", _w_torch)]
    if _is_keras(obj):
        return [("keras", _w_keras)]
    if _is_xgboost(obj):
        return [("xgboost", _w_xgboost)]
    if _is_lightgbm(obj):
        return [("lightgbm", _w_lightgbm)]
    if _is_estimator(obj):
        return [("joblib", _w_joblib)]
    if _is_plain(obj):
        return [("pickle", _w_pickle)]
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
    algorithm = _hash_algorithm()
    attempts = _candidates(obj, pandas_format)
    attempts.append(("dill", _w_dill))
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
        except Exception as exc:  # noqa: BLE001 - any failure moves on to the next format
            errors.append(f"{fmt}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            _clear(directory)
    else:
        raise MarshalError(f"cannot store variable {name!r} of type {tname}: {errors[-1]}")
    if fmt == "dill":
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
            {"path": p.name, "size": p.stat().st_size, "hash": known.get(p.name) or _hash_file(p, algorithm, name)}
        )
    manifest = {
        "schema": SCHEMA,
        "name": name,
        "type": tname,
        "format": fmt,
        "files": files,
        "size": sum(f["size"] for f in files),
        "hash": _combined_hash(algorithm, tname, fmt, meta, files, name),
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
    if _is_ndarray(obj) and not obj.dtype.hasobject:
        fmt, arr = "npy", obj
    elif _is_npscalar(obj):
        import numpy as np

        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            return None
        fmt = "npy-scalar"
    else:
        return None
    algorithm = _hash_algorithm()
    header, data = _npy_parts(arr)
    files = [
        {"path": "value.npy", "size": len(header) + data.nbytes, "hash": _hash_buffer(algorithm, name, header, data)}
    ]
    return _combined_hash(algorithm, _value_type(obj), fmt, {}, files, name)


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


def _corrupt(name: str, detail: str) -> CorruptValue:
    return CorruptValue(f"stored value {name!r} is corrupt: {detail}")


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
        raise _corrupt(name, f"manifest hash is not {expected_hash[:12]}... (altered or misplaced)")
    try:
        _check_layout(directory, manifest, name)
        for entry in manifest["files"]:
            _verify_file(directory, entry, manifest["hash_algorithm"], name)
    except CorruptValue:
        raise
    except (KeyError, TypeError, MarshalError) as exc:
        raise _corrupt(name, f"manifest unusable ({type(exc).__name__})") from None
    return manifest


def _check_layout(directory: Path, manifest: dict, name: str) -> None:
    """Manifest self-consistency, file names, sizes (truncation shows up here, before any hashing)."""
    algorithm = manifest.get("hash_algorithm", "")
    files = manifest["files"]
    for f in files:
        p = f.get("path", "")
        if not p or "/" in p or "\\" in p or p in (".", "..", MANIFEST):
            raise _corrupt(name, f"bad file name {p!r} in manifest")
        try:
            size = (directory / p).stat().st_size
        except OSError:
            raise _corrupt(name, f"file {p} is missing") from None
        if size != f["size"]:
            raise _corrupt(name, f"file {p} is {size} bytes, expected {f['size']} (truncated or altered)")
    want = _combined_hash(
        algorithm, manifest.get("type", ""), manifest["format"], manifest.get("meta", {}), files, name
    )
    if want != manifest.get("hash"):
        raise _corrupt(name, "manifest does not match its hash (altered)")


def _verify_file(directory: Path, entry: dict, algorithm: str, name: str) -> None:
    if _hash_file(directory / entry["path"], algorithm, name) != entry["hash"]:
        raise _corrupt(name, f"file {entry['path']} does not match its hash (altered)")


def load(
    directory: str | os.PathLike, name: str | None = None, mmap: bool = True, *, expected_hash: str | None = None
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
    """
    directory = Path(directory)
    manifest = read_manifest(directory, name)
    name = name or manifest.get("name") or str(directory)
    if expected_hash is not None and manifest.get("hash") != expected_hash:
        raise _corrupt(name, f"manifest hash is not {expected_hash[:12]}... (altered or misplaced)")
    _check_layout(directory, manifest, name)
    fmt, meta = manifest["format"], manifest.get("meta", {})
    algorithm = manifest["hash_algorithm"]
    if fmt in ("npy", "npy-scalar"):
        entry = manifest["files"][0]
        arr = _read_npy(directory / entry["path"], entry["hash"], algorithm, name, mmap and fmt == "npy")
        return arr[()] if fmt == "npy-scalar" else arr
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


def _read_npy(path: Path, digest: str, algorithm: str, name: str, allow_mmap: bool) -> Any:
    import numpy as np

    fmt = np.lib.format
    with open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
        except ValueError as exc:
            raise _corrupt(name, f"bad npy header ({exc})") from None
        offset = f.tell()
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if os.fstat(f.fileno()).st_size != offset + nbytes:
            raise _corrupt(name, f"{path.name} does not hold {shape} {dtype} (truncated or altered)")
        order = "F" if fortran else "C"
        if allow_mmap and nbytes >= MMAP_THRESHOLD:
            mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
            if _hash_buffer(algorithm, name, mm) != digest:
                mm.close()
                raise _corrupt(name, f"file {path.name} does not match its hash (altered)")
            return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, order=order)
        f.seek(0)
        h = _hasher(algorithm, name)
        h.update(f.read(offset))
        arr = np.empty(shape, dtype=dtype, order=order)
        data = memoryview((arr.T if fortran else arr).reshape(-1).view(np.uint8)) if nbytes else memoryview(b"")
        got = _read_chunks(f, data, h)
    if got != nbytes or h.hexdigest() != digest:
        raise _corrupt(name, f"file {path.name} does not match its hash (altered)")
    return arr


def _r_parquet(directory: Path, meta: dict, mmap: bool) -> Any:
    import pyarrow.parquet as pq

    table = pq.read_table(directory / "value.parquet", memory_map=True)
    # one block per column (no consolidation copy) unless the frame is wide enough for that to hurt pandas
    df = table.to_pandas(split_blocks=table.num_columns <= 100, self_destruct=True)
    del table
    if meta.get("series"):
        return df["__value__"].rename(meta.get("series_name"))
    return df


def _r_pickle(directory: Path, meta: dict, mmap: bool) -> Any:
    buffers = None
    spans = meta.get("buffers")
    if spans:
        path = directory / "buffers.bin"
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if mmap and size >= MMAP_THRESHOLD:
                raw: Any = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
            else:
                raw = bytearray(size)
                _read_chunks(f, memoryview(raw))
        view = memoryview(raw)
        buffers = [view[o : o + n] for o, n in spans]
    with open(directory / "value.pkl", "rb") as f:
        return pickle.load(f, buffers=buffers)


def _r_joblib(directory: Path, meta: dict, mmap: bool) -> Any:
    import joblib

    return joblib.load(directory / "value.joblib")


def _r_dill(directory: Path, meta: dict, mmap: bool) -> Any:
    import dill

    with open(directory / "value.dill", "rb") as f:
        return dill.load(f)


def _r_torch(directory: Path, meta: dict, mmap: bool) -> Any:
    import torch

    if meta.get("kind") == "tensor":
        return torch.load(directory / "tensor.pt", weights_only=True)
    kw: dict = {}
    if meta.get("pickle_module") == "dill":
        import dill

        kw["pickle_module"] = dill
    module = torch.load(directory / "module.pt", weights_only=False, **kw)
    module.load_state_dict(torch.load(directory / "state_dict.pt", weights_only=True))
    return module


def _r_keras(directory: Path, meta: dict, mmap: bool) -> Any:
    try:
        import keras
    except ImportError:
        from tensorflow import keras  # type: ignore[no-redef]
    return keras.models.load_model(str(directory / "model.keras"))


def _r_xgboost(directory: Path, meta: dict, mmap: bool) -> Any:
    import xgboost  # noqa: F401

    model = _resolve(meta["class"])()
    model.load_model(str(directory / "model.json"))
    return model


def _r_lightgbm(directory: Path, meta: dict, mmap: bool) -> Any:
    import lightgbm

    return lightgbm.Booster(model_file=str(directory / "model.bst"))


_READERS: dict[str, Callable[[Path, dict, bool], Any]] = {
    "parquet": _r_parquet,
    "pickle": _r_pickle,
    "joblib": _r_joblib,
    "dill": _r_dill,
    "torch": _r_torch,
    "keras": _r_keras,
    "xgboost": _r_xgboost,
    "lightgbm": _r_lightgbm,
}
