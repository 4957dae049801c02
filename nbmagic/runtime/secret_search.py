"""Whether a value holds one of a run's secrets: in memory (whatever format stores it) and in its stored files.

One check for both callers: the store refuses such a value (``store.objects``), a compiled step keeps it out of
the shared store (``store_secrets``). The in-memory walk sees what a compressed or escaped file hides; the file
search sees what the walk does not reach (its bounds, objects that keep their state outside Python).
"""

from __future__ import annotations

import mmap
import sys
import types
from pathlib import Path
from typing import Any

#: how a secret's text can sit in bytes: UTF-8 (pickle, parquet), UTF-32 (numpy 'U' arrays), UTF-16
ENCODINGS = ("utf-8", "utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be")
MIN_LEN = 4  # shorter secrets match too much: only a value equal to one counts
NODES = 100_000  # containers, objects and non-text elements visited before the walk stops
DEPTH = 8
CHUNK = 65_536  # strings of an array joined per search
CHARS = 1 << 23  # at most this many characters joined at once (a copy of at most 32 MB)
_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.CodeType)


def needles(secrets: tuple[str, ...] | list[str]) -> list[bytes]:
    """The byte forms a secret of at least ``MIN_LEN`` characters takes in a file, in every encoding."""
    return list(dict.fromkeys(s.encode(e) for s in secrets if len(s) >= MIN_LEN for e in ENCODINGS))


def files_hold_secret(folder: Path, secrets: tuple[str, ...] | list[str]) -> bool:
    """True when a file of ``folder`` contains a secret in any of ``ENCODINGS``."""
    found = needles(secrets)
    for path in Path(folder).iterdir():
        if not found or not path.is_file() or path.stat().st_size == 0:
            continue
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if any(data.find(needle) >= 0 for needle in found):
                return True
    return False


def holds_secret(obj: Any, secrets: tuple[str, ...] | list[str]) -> bool:
    """True when obj, or a string or bytes anywhere inside it, equals or contains a secret.

    Walks dict/list/tuple/set, numpy str/bytes/object/structured arrays, pandas frames, series and indexes
    (labels and text columns), and the attributes (``__dict__``, ``__slots__``) of other objects; at most
    ``DEPTH`` levels and ``NODES`` nodes, each object once.
    """
    secrets = tuple(s for s in secrets if s)
    return bool(secrets) and _Walk(secrets).holds(obj)


class _Walk:
    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.long = tuple(s for s in secrets if len(s) >= MIN_LEN)
        self.bytes = tuple(needles(secrets))
        self.exact_bytes = frozenset(s.encode() for s in secrets)
        self.budget = NODES
        self.seen: set[int] = set()
        self.kept: list[Any] = []

    def text(self, value: str) -> bool:
        return value in self.secrets or any(s in value for s in self.long)

    def raw(self, value: bytes | bytearray) -> bool:
        return bytes(value) in self.exact_bytes or any(n in value for n in self.bytes)

    def holds(self, obj: Any, depth: int = 0) -> bool:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, (bytes, bytearray)):
            return self.raw(obj)
        if obj is None or isinstance(obj, (int, float, complex, bool, _SKIP)):
            return False
        self.budget -= 1
        if self.budget < 0 or depth > DEPTH or id(obj) in self.seen:
            return False
        self.seen.add(id(obj))
        self.kept.append(obj)  # alive until the walk ends: a temporary's id is not given to a later one
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray):
            return self.array(obj, depth, np)
        if np is not None and isinstance(obj, np.generic):
            return False  # numbers; numpy's str_/bytes_ are str/bytes above
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            return self.pandas(obj, depth, pd, np)
        if isinstance(obj, dict):
            return any(self.holds(k, depth + 1) or self.holds(v, depth + 1) for k, v in list(obj.items()))
        if isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
            return self.sequence(list(obj), depth)
        return self.attributes(obj, depth)

    def sequence(self, items: list, depth: int) -> bool:
        """Strings searched a chunk at a time (joined by NUL, which no secret holds; a chunk holds at most
        :data:`CHARS` characters, so the joined copy stays small whatever the strings), everything else walked."""
        for start in range(0, len(items), CHUNK):
            part = items[start : start + CHUNK]
            if set(map(type, part)) <= {str} and sum(map(len, part)) + len(part) <= CHARS:  # the common case, in C
                if self._joined(part):
                    return True
                continue
            chunk: list[str] = []
            size = 0
            for x in part:
                if type(x) is not str:
                    if self.holds(x, depth + 1):
                        return True
                elif len(x) > CHARS:  # a long text alone, not copied into a join
                    if self.text(x):
                        return True
                else:
                    chunk.append(x)
                    size += len(x) + 1
                    if size > CHARS:
                        if self._joined(chunk):
                            return True
                        chunk, size = [], 0
            if chunk and self._joined(chunk):
                return True
        return False

    def _joined(self, strings: list[str]) -> bool:
        joined = "\0" + "\0".join(strings) + "\0"
        return any(f"\0{s}\0" in joined for s in self.secrets) or any(s in joined for s in self.long)

    def array(self, arr: Any, depth: int, np: Any) -> bool:
        if arr.dtype.names:  # structured: each field
            return any(self.array(arr[name], depth + 1, np) for name in arr.dtype.names)
        if arr.dtype.kind in "US":
            find = getattr(getattr(np, "strings", None), "find", None) or np.char.find
            for secret in self.secrets:
                needle: str | bytes = secret if arr.dtype.kind == "U" else secret.encode()
                if (arr == needle).any() or (len(secret) >= MIN_LEN and (find(arr, needle) >= 0).any()):
                    return True
            return False
        if arr.dtype.hasobject:
            return self.sequence(arr.ravel().tolist(), depth)
        if arr.dtype.kind == "T":  # numpy 2's StringDType
            return self.sequence(arr.ravel().tolist(), depth)
        return False

    def pandas(self, obj: Any, depth: int, pd: Any, np: Any) -> bool:
        if isinstance(obj, pd.Index):
            if isinstance(obj, pd.MultiIndex):
                return any(self.pandas(level, depth + 1, pd, np) for level in obj.levels) or self.holds(
                    list(obj.names), depth + 1
                )
            return self.column(obj, depth, pd) or self.holds(obj.name, depth + 1)
        if isinstance(obj, pd.Series):
            return (
                self.column(obj, depth, pd)
                or self.holds(obj.name, depth + 1)
                or self.pandas(obj.index, depth + 1, pd, np)
                or self.holds(dict(obj.attrs), depth + 1)
            )
        return (
            self.pandas(obj.columns, depth + 1, pd, np)
            or self.pandas(obj.index, depth + 1, pd, np)
            or any(self.column(obj.iloc[:, i], depth, pd) for i in range(obj.shape[1]))
            or self.holds(dict(obj.attrs), depth + 1)
        )

    def column(self, values: Any, depth: int, pd: Any) -> bool:
        """A series' or index's elements: text and objects (numbers, dates and booleans hold no text)."""
        dtype = values.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            return self.column(dtype.categories, depth + 1, pd)
        kind = getattr(dtype, "kind", "O")
        if kind in "biufcmM" and not isinstance(dtype, pd.StringDtype):
            return False
        try:
            items = values.to_numpy(dtype=object).ravel().tolist()
        except Exception:  # noqa: BLE001 - an extension array without an object form: its file is searched
            return False
        return self.sequence(items, depth)

    def attributes(self, obj: Any, depth: int) -> bool:
        """An object's instance attributes (never properties: nothing of the object's runs)."""
        found: list[Any] = []
        try:
            state = object.__getattribute__(obj, "__dict__")
        except Exception:  # noqa: BLE001 - no instance dict (or one that cannot be read)
            state = None
        if isinstance(state, dict):
            found.append(state)
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__"):
                    try:
                        found.append(object.__getattribute__(obj, slot))
                    except Exception:  # noqa: BLE001 - an empty slot
                        continue
        return any(self.holds(x, depth + 1) for x in found)
