"""The memory numpy arrays, pandas objects and torch tensors use, as byte ranges, and which of them overlap.

Values stored one by one load as separate copies: two values whose buffers overlap (a DataFrame made over an
array without a copy, a column kept beside its frame, ``torch.from_numpy``) would stop sharing memory. Nothing
here imports numpy, pandas or torch: a value of one of them means its module is loaded already.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple


class Buffer(NamedTuple):
    """Bytes ``[start, end)`` on ``device`` used by the object with id ``owner``; ``frozen``: nothing writes
    through it (an Index, an Arrow array); ``array``: the numpy array itself, for an exact check when both sides are arrays."""

    start: int
    end: int
    device: str
    owner: int
    frozen: bool
    array: Any


class Unknown(Exception):
    """A buffer whose memory cannot be told."""


def array_buffers(arr: Any, owner: int, frozen: bool = False) -> list[Buffer]:
    """The byte range a numpy array's elements span (none for an empty array)."""
    if arr.size == 0:
        return []
    start = end = arr.__array_interface__["data"][0]
    for n, stride in zip(arr.shape, arr.strides, strict=True):
        reach = (n - 1) * stride
        if reach < 0:
            start += reach
        else:
            end += reach
    return [Buffer(start, end + arr.itemsize, "cpu", owner, frozen, arr)]


def tensor_buffers(tensor: Any) -> list[Buffer]:
    """The whole storage a torch tensor views (a view may reach any of it through its storage)."""
    storage = tensor.untyped_storage()
    size = storage.nbytes()
    if size == 0:
        return []
    start = storage.data_ptr()
    return [Buffer(start, start + size, str(tensor.device), id(tensor), False, None)]


def _values_buffers(values: Any, owner: int, frozen: bool, depth: int = 0) -> list[Buffer]:
    """Buffers of a block's or an index's values: a numpy array, or an extension array and what it holds."""
    np = sys.modules["numpy"]
    if isinstance(values, np.ndarray):
        return array_buffers(values, owner, frozen)
    if depth > 3:
        raise Unknown(type(values).__qualname__)
    pd = sys.modules["pandas"]
    if isinstance(values, pd.Index):
        return index_buffers(values, owner)
    found: list[Buffer] = []
    module = type(values).__module__ or ""
    if module.startswith("pyarrow"):
        chunks = getattr(values, "chunks", None)
        for chunk in [values] if chunks is None else chunks:
            for buffer in chunk.buffers():
                if buffer is not None and buffer.size:
                    # Arrow arrays never change: only a writable array over the same memory could change them
                    found.append(Buffer(buffer.address, buffer.address + buffer.size, "cpu", owner, True, None))
        return found
    if not isinstance(values, pd.api.extensions.ExtensionArray):
        raise Unknown(type(values).__qualname__)
    kind = type(values)
    named = (getattr(values, n, None) for n in _PARTS if not isinstance(getattr(kind, n, None), property))
    parts = {id(p): p for p in named if p is not None}  # a property may warn or compute: attributes only
    parts.update((id(p), p) for p in getattr(values, "__dict__", {}).values())
    for part in parts.values():
        if isinstance(part, (np.ndarray, pd.Index, pd.api.extensions.ExtensionArray)) or (
            type(part).__module__ or ""
        ).startswith("pyarrow"):
            found.extend(_values_buffers(part, owner, frozen, depth + 1))
    if not found and len(values):
        raise Unknown(f"{type(values).__qualname__} holds no buffer it names")
    return found


# where pandas' own extension arrays keep their data (several are attributes of a compiled class, not in __dict__)
_PARTS = ("_ndarray", "_data", "_mask", "_pa_array", "_left", "_right", "_sparse_values")


def index_buffers(index: Any, owner: int) -> list[Buffer]:
    """An Index's buffers, frozen: pandas never writes through an Index (frames share them freely)."""
    pd = sys.modules["pandas"]
    if isinstance(index, pd.RangeIndex):
        return []
    if isinstance(index, pd.MultiIndex):
        found = [b for level in index.levels for b in index_buffers(level, owner)]
        return found + [b for codes in index.codes for b in array_buffers(codes, owner, True)]
    return _values_buffers(index._data, owner, True)


def copy_on_write() -> bool:
    """pandas copies a block shared with another frame or series before writing to it (its copy-on-write mode)."""
    pd = sys.modules.get("pandas")
    return pd is not None and pd.options.mode.copy_on_write is True


def pandas_buffers(obj: Any, cow: bool = False) -> list[Buffer]:
    """A DataFrame's or Series's blocks and axes, or an Index's values; other pandas values use none. With
    ``cow`` (pandas' copy-on-write mode on) the blocks count as frozen: two pandas objects sharing them stay apart
    as copies would, while a numpy array or tensor over them can still write through."""
    pd = sys.modules["pandas"]
    if isinstance(obj, pd.Index):
        return index_buffers(obj, id(obj))
    if not isinstance(obj, (pd.DataFrame, pd.Series)):
        return []
    manager = obj._mgr
    found = [b for block in manager.blocks for b in _values_buffers(block.values, id(obj), cow)]
    return found + [b for axis in manager.axes for b in index_buffers(axis, id(obj))]


def _shares(a: Buffer, b: Buffer) -> bool:
    if a.array is None or b.array is None:
        return True  # the ranges overlap: taken as shared
    np = sys.modules["numpy"]
    try:
        return bool(np.shares_memory(a.array, b.array, max_work=1000))
    except np.exceptions.TooHardError:
        return True


def overlap(
    named: list[tuple[str, Buffer]], matters: Callable[[str, str], bool], charge: Callable[[int], None] = lambda n: None
) -> tuple[str, str] | None:
    """The first two names (the later in the order given first) for which ``matters`` holds whose buffers of
    different owners share memory, one of them written through (not both an Index). One name twice when two
    objects inside its value do (``matters(name, name)``: pickled as one value they load as two copies). Sorted by
    start, each range is compared only with those still open; ``charge`` is told how many (it may raise to stop)."""
    order = {name: i for i, name in enumerate(dict.fromkeys(n for n, _ in named))}
    spans = sorted(named, key=lambda item: (item[1].device, item[1].start))
    open_: list[tuple[str, Buffer]] = []
    for name, buffer in spans:
        charge(len(open_) + 1)
        open_ = [(n, b) for n, b in open_ if b.device == buffer.device and b.end > buffer.start]
        for other, seen in open_:
            if seen.owner == buffer.owner or (seen.frozen and buffer.frozen):
                continue
            if not matters(name, other):
                continue
            if _shares(seen, buffer):
                return (name, other) if order[name] > order[other] else (other, name)
        open_.append((name, buffer))
    return None
