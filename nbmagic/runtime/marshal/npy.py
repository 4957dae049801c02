"""numpy arrays as ``value.npy`` (no pickling) and numpy scalars as a 0-d npy (``npy-scalar``).

Writing hashes each piece as it is written; reading hashes while reading (or through the very copy-on-write map
that backs a large returned array), so verification costs one pass over data already in cache.
"""

from __future__ import annotations

import io
import mmap as _mmap
import os
import sys
from pathlib import Path
from typing import Any

from . import base
from .base import Written, corrupt, hash_buffer, hasher, read_chunks, versions, write_chunks

FORMAT = "npy"
SCALAR_FORMAT = "npy-scalar"
FILE = "value.npy"


def is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(obj) in (np.ndarray, np.memmap)


def is_scalar(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.generic) and type(obj).__module__ == "numpy"


def parts(arr: Any) -> tuple[bytes, memoryview]:
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


def _write_file(arr: Any, directory: Path, algorithm: str, name: str) -> str:
    header, data = parts(arr)
    h = hasher(algorithm, name)
    h.update(header)
    with open(directory / FILE, "wb") as f:
        f.write(header)
        write_chunks(f, data, h)
    return h.hexdigest()


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    h = _write_file(obj, directory, algorithm, name)
    return {}, versions("numpy"), {FILE: h}


def write_scalar(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import numpy as np

    h = _write_file(np.asarray(obj), directory, algorithm, name)
    return {}, versions("numpy"), {FILE: h}


def read(path: Path, digest: str, algorithm: str, name: str, allow_mmap: bool, threshold: int | None = None) -> Any:
    """The array in ``path``, verified against ``digest`` while it is read (MarshalError if it differs)."""
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
            raise corrupt(name, f"bad npy header ({exc})") from None
        offset = f.tell()
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if os.fstat(f.fileno()).st_size != offset + nbytes:
            raise corrupt(name, f"{path.name} does not hold {shape} {dtype} (truncated or altered)")
        order = "F" if fortran else "C"
        if allow_mmap and nbytes >= (base.MMAP_THRESHOLD if threshold is None else threshold):
            mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_COPY)
            if hash_buffer(algorithm, name, mm) != digest:
                mm.close()
                raise corrupt(name, f"file {path.name} does not match its hash (altered)")
            return np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, order=order)
        f.seek(0)
        h = hasher(algorithm, name)
        h.update(f.read(offset))
        arr = np.empty(shape, dtype=dtype, order=order)
        data = memoryview((arr.T if fortran else arr).reshape(-1).view(np.uint8)) if nbytes else memoryview(b"")
        got = read_chunks(f, data, h)
    if got != nbytes or h.hexdigest() != digest:
        raise corrupt(name, f"file {path.name} does not match its hash (altered)")
    return arr
