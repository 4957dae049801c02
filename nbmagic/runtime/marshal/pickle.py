"""Plain Python values and containers of them (and pandas frames parquet cannot hold) as pickle protocol 5,
with large buffers (numpy/pandas data) written raw and 64-byte aligned to ``buffers.bin``."""

from __future__ import annotations

import mmap as _mmap
import os
import pickle
from pathlib import Path
from typing import Any

from . import base, joblib, npy, parquet
from .base import ALIGN, Written, read_chunks, type_name, versions, write_chunks

FORMAT = "pickle"
PLAIN_LIMIT = 1_000_000  # containers: elements inspected before giving up on "plain"

_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, slice)
_CONTAINERS = (list, tuple, set, frozenset, dict)
_COLLECTIONS = ("collections.OrderedDict", "collections.Counter", "collections.deque")
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


def claims(obj: Any) -> bool:
    """Plain values and containers of them (numpy/pandas values and estimators allowed inside containers)."""
    stack, seen, budget = [obj], set(), PLAIN_LIMIT
    while stack:
        x = stack.pop()
        budget -= 1
        if budget < 0:
            return False
        t = type(x)
        if t in _ATOMS:
            continue
        if t in _CONTAINERS or type_name(x) in _COLLECTIONS:
            if id(x) in seen:
                continue
            seen.add(id(x))
            stack.extend(x.keys() if isinstance(x, dict) else ())
            stack.extend(x.values() if isinstance(x, dict) else x)
            continue
        if type_name(x) in _STDLIB_LEAVES or (
            x is not obj and (npy.is_ndarray(x) or npy.is_scalar(x) or parquet.claims(x) or joblib.is_sklearn(x))
        ):
            continue
        return False
    return True


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    buffers: list[pickle.PickleBuffer] = []
    with open(directory / "value.pkl", "wb") as f:
        pickle.dump(obj, f, protocol=5, buffer_callback=buffers.append)
    meta: dict = {}
    if buffers:
        spans, offset = [], 0
        with open(directory / "buffers.bin", "wb") as f:
            for b in buffers:
                raw = b.raw()
                pad = -offset % ALIGN
                if pad:
                    f.write(b"\0" * pad)
                    offset += pad
                write_chunks(f, raw)
                spans.append([offset, raw.nbytes])
                offset += raw.nbytes
        meta["buffers"] = spans
    return meta, versions("numpy", "pandas", "sklearn"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    buffers = None
    spans = meta.get("buffers")
    if spans:
        path = directory / "buffers.bin"
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if mmap and size >= base.MMAP_THRESHOLD:
                raw: Any = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
            else:
                raw = bytearray(size)
                read_chunks(f, memoryview(raw))
        view = memoryview(raw)
        buffers = [view[o : o + n] for o, n in spans]
    with open(directory / "value.pkl", "rb") as f:
        return pickle.load(f, buffers=buffers)
