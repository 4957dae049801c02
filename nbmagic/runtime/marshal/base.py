"""What every format shares: the manifest's constants, errors, content hashing, chunked I/O and type names.

Standard library only. A format module provides ``claims(obj)`` (is obj this format's kind?), ``write(obj,
directory, algorithm, name) -> Written`` and ``read(directory, meta, mmap)``; the package puts them in order.
"""

from __future__ import annotations

import hashlib
import json
import mmap as _mmap
import os
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
SCHEMA = 1
MMAP_THRESHOLD = 64 << 20  # arrays at least this large load memory-mapped when mmap=True
ALIGN = 64  # out-of-band pickle buffers start on 64-byte boundaries
CHUNK = 8 << 20  # I/O in 8 MiB pieces: one huge read/write stalls on page faults on a busy machine

# A writer stores obj into directory and returns (meta, versions, precomputed file hashes).
Written = "tuple[dict, dict[str, str], dict[str, str]]"


class MarshalError(ValueError):
    """A value could not be stored or loaded; the one-line message names the variable and type."""


class CorruptValue(MarshalError):
    """A stored value's bytes do not match its manifest (altered, truncated or missing files)."""


#: errno values meaning "the filesystem has no room": :func:`save` re-raises these OSErrors unchanged
DISK_FULL = frozenset({28, 122, 27})  # ENOSPC, EDQUOT, EFBIG


class MarshalWarning(UserWarning):
    """A value was stored with the dill fallback."""


def corrupt(name: str, detail: str) -> CorruptValue:
    return CorruptValue(f"stored value {name!r} is corrupt: {detail}")


# ----------------------------------------------------------------------------------------- hashing


def hash_algorithm() -> str:
    """xxh3-128 when the ``xxhash`` package is installed, else BLAKE2b-192 (stdlib)."""
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b-192"
    return "xxh3-128"


def hasher(algorithm: str, name: str) -> Any:
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


def hash_buffer(algorithm: str, name: str, *parts: Any) -> str:
    h = hasher(algorithm, name)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def hash_file(path: Path, algorithm: str, name: str) -> str:
    """Hash a file through a read-only memory map (page-cache speed, no copy)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hash_buffer(algorithm, name, b"")
        with _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ) as mm:
            return hash_buffer(algorithm, name, mm)


def combined_hash(algorithm: str, type_name: str, fmt: str, meta: dict, files: list[dict], name: str) -> str:
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
    return hash_buffer(algorithm, name, head.encode())


# -------------------------------------------------------------------------------------- chunked I/O


def write_chunks(f: Any, data: memoryview, h: Any = None) -> None:
    """Write data in pieces, hashing each piece while it is still in the CPU cache."""
    for o in range(0, data.nbytes, CHUNK):
        part = data[o : o + CHUNK]
        f.write(part)
        if h is not None:
            h.update(part)


def read_chunks(f: Any, data: memoryview, h: Any = None) -> int:
    """readinto data in pieces (hashing each); returns the bytes read."""
    got = 0
    while got < data.nbytes:
        n = f.readinto(data[got : got + CHUNK])
        if not n:
            break
        if h is not None:
            h.update(data[got : got + n])
        got += n
    return got


# ------------------------------------------------------------------------------------ type helpers


def type_name(obj: Any) -> str:
    """Qualified type name: ``int``, ``numpy.ndarray``, ``sklearn.linear_model._base.LinearRegression``."""
    t = type(obj)
    module = getattr(t, "__module__", None) or ""
    qual = getattr(t, "__qualname__", t.__name__)
    return qual if module == "builtins" else f"{module}.{qual}"


def mods(obj: Any) -> list[str]:
    """The modules of every class in obj's type's MRO."""
    return [getattr(c, "__module__", "") or "" for c in type(obj).__mro__]


def mro_has(obj: Any, prefixes: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether a class named one of ``names`` from a module starting with one of ``prefixes`` is in obj's MRO."""
    for c in type(obj).__mro__:
        mod = getattr(c, "__module__", "") or ""
        if c.__name__ in names and mod.startswith(prefixes):
            return True
    return False


def versions(*names: str) -> dict[str, str]:
    """``__version__`` of each named module that is already imported."""
    out = {}
    for n in names:
        mod = sys.modules.get(n)
        v = getattr(mod, "__version__", None) if mod is not None else None
        if v is not None:
            out[n] = str(v)
    return out


def resolve(qualified: str) -> Any:
    """The object a qualified name (``module.Class``) names, importing its module."""
    import importlib

    module, _, qual = qualified.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj
