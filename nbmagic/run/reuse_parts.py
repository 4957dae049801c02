"""Columns taken from a DataFrame, found so that reuse loads them as the same part of the loaded frame.

``y = df["y"]`` (pandas' cached column, with copy-on-write off), ``y = df.iloc[:, -1]``, ``y = df["y"].values`` and
share memory with ``df``. Stored one by one they would load as copies; found here, each is loaded as that very
column of the loaded (or the kernel's) ``df``, a view of it whatever the loaded frame's blocks, as running gives.
A frame over several columns (``df.iloc[:, :-1]``) is not: whether it is a view depends on the frame's blocks,
which loading does not keep. A path step is a subscript (str or int), ``["icol", i]`` (``.iloc[:, i]``) or
``["values"]`` (``.values``). Nothing here imports pandas or numpy.
"""

from __future__ import annotations

import sys
from typing import Any

MAX_COLUMNS = 2_000  # columns of one frame compared with a value; past it the value is not looked for


def valid(key: Any) -> bool:
    """A path step :func:`apply` knows."""
    if type(key) in (str, int):
        return True
    if type(key) is not list or not key:
        return False
    if key == ["values"]:
        return True
    return key[0] == "icol" and len(key) == 2 and type(key[1]) is int


def apply(root: Any, key: Any) -> Any:
    """One step of a path from ``root``."""
    if type(key) is not list:
        return root[key]
    if key == ["values"]:
        return root.values
    if key[0] == "icol":
        return root.iloc[:, key[1]]
    raise KeyError(key)


def _same(a: Any, b: Any) -> bool:
    """The same memory seen the same way: one object, or numpy arrays with equal pointer, shape, strides, dtype."""
    if a is b:
        return True
    np = sys.modules.get("numpy")
    if np is None or not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        return False
    ia, ib = a.__array_interface__, b.__array_interface__
    return ia["data"] == ib["data"] and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype


def _column(frame: Any, i: int) -> Any:
    return frame.iloc[:, i]


_PANDAS_OWN = frozenset({"_attrs", "_cacher", "_flags", "_is_copy", "_item_cache", "_mgr", "_name", "_references"})


def _accessor(value: Any, key: str, item: Any) -> bool:
    """``.cat``, ``.str``, ``.dt``...: pandas' own accessor, kept on the Series once used."""
    kind = type(value)
    static = next((k.__dict__[key] for k in kind.__mro__ if key in k.__dict__), None)
    known = key in getattr(kind, "_accessors", ()) or type(static).__name__ == "CachedAccessor"
    return known and type(item).__module__.startswith("pandas.")  # .plot is cached too, not in _accessors


def _plain(value: Any) -> bool:
    """A Series holding nothing its frame's column would not: no ``attrs``, default flags, no attribute of its own."""
    own = getattr(value, "__dict__", {})
    return (
        not value.attrs
        and value.flags.allows_duplicate_labels
        and all(key in _PANDAS_OWN or _accessor(value, key, item) for key, item in own.items())
    )


def _series_part(value: Any, frame: Any) -> list[Any] | None:
    """The step giving the Series ``value`` from ``frame``: its cached column (``frame[name] is value``), else a
    positional column of the same index, name and memory."""
    if value.index is not frame.index or not _plain(value):
        return None
    name = value.name
    cache = getattr(frame, "_item_cache", None)
    if type(name) in (str, int) and isinstance(cache, dict) and cache.get(name) is value:
        if frame.columns.is_unique:
            return [name]
    for i, label in enumerate(frame.columns):
        if label is name or (type(label) is type(name) and label == name):
            if _same(_column(frame, i)._values, value._values):
                return [["icol", i]]
    return None


def _array_part(value: Any, frame: Any) -> list[Any] | None:
    """``frame``'s column ``i`` ``.values`` (a view of its block, as running gives)."""
    if value.ndim != 1 or len(value) != len(frame):
        return None
    for i, dtype in enumerate(frame.dtypes):
        if dtype == value.dtype and _same(_column(frame, i).values, value):
            return [["icol", i], ["values"]]
    return None


def parts(assigned: dict[str, Any], tops: dict[str, Any], skip: set[str]) -> dict[str, list[Any]]:
    """Name -> [frame's name, steps] of the assigned Series and arrays that are a column of another top-level
    DataFrame, taken without a copy. Names in ``skip`` are left out."""
    pd = sys.modules.get("pandas")
    np = sys.modules.get("numpy")
    if pd is None or np is None:
        return {}
    from .buffers import copy_on_write

    if copy_on_write():  # columns are copied when written: the sharing running gives is not the same
        return {}
    frames = {
        n: v
        for n, v in tops.items()
        if type(v) is pd.DataFrame and n not in skip and len(v.columns) <= MAX_COLUMNS and len(v.columns)
    }
    found: dict[str, list[Any]] = {}
    for name, value in assigned.items():
        if name in skip:
            continue
        for whole, frame in frames.items():
            if whole == name or whole in found:
                continue
            if type(value) is pd.Series:
                path = _series_part(value, frame)
            elif type(value) is np.ndarray:
                path = _array_part(value, frame)
            else:
                path = None
            if path is not None:
                found[name] = [whole, *path]
                break
    return found


def mark_mode(outputs: dict[str, dict[str, Any]]) -> None:
    """Note pandas' copy-on-write mode on each stored reference once pandas is loaded: whether pandas values (at
    the top or inside others) share their blocks loaded depends on it, as it did when they ran."""
    from .buffers import copy_on_write

    if "pandas" not in sys.modules and not any(ref.get("alias") for ref in outputs.values()):
        return
    mode = copy_on_write()
    for name, ref in outputs.items():
        outputs[name] = {**ref, "cow": mode}


def other_mode(outputs: dict[str, dict[str, Any]]) -> str | None:
    """Why stored results cannot be loaded under pandas' copy-on-write mode now: they were kept under the other."""
    from .buffers import copy_on_write

    mode = copy_on_write()
    then = next((ref["cow"] for ref in outputs.values() if "cow" in ref and ref["cow"] is not mode), None)
    if then is None:
        return None
    return (
        f"its results were kept with pandas' copy_on_write {'on' if then else 'off'}, and it is"
        f" {'on' if mode else 'off'} now"
    )
