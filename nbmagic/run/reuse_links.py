"""What reuse cannot bring back from the store: objects two values share, and the notebook's own code inside one.

Values are stored one by one, so an object reachable from two of them loads as two objects, and a function the
notebook defined loads as a copy that reads a frozen copy of the kernel's globals. :func:`shared` and
:func:`notebook_code` walk values (containers, plain objects' attributes, ``functools.partial``, bound methods)
with a bound on work; numpy arrays are told apart by the memory they use, pandas objects are leaves, and an
array's or a list of numbers' contents are never walked item by item. Values whose memory overlaps (a DataFrame or
a tensor over an array, a column kept beside its frame) are found by comparing the byte ranges of their buffers
(:mod:`.buffers`). Only the exact built-in types count as holding nothing: a subclass's attributes are walked.
"""

from __future__ import annotations

import array
import collections
import datetime
import decimal
import enum
import fractions
import functools
import gc
import pathlib
import re
import sys
import threading
import time
import types
import uuid
import warnings
from collections.abc import Iterable
from typing import Any

from .buffers import Buffer, array_buffers, copy_on_write, overlap, pandas_buffers, tensor_buffers
from .reuse_parts import apply, parts

LIMIT = 1_000_000  # objects looked at per call; past it reuse cannot be sure
TIME_LIMIT = 1.0  # CPU seconds of the calling thread one call may take; past it reuse cannot be sure
MODULE_LIMIT = 300_000  # objects looked at inside the values of the modules a step imports; past it: not sure

_ATOMS = (
    int,
    float,
    complex,
    str,
    bytes,
    bool,
    type(None),
    range,
    slice,
    type(Ellipsis),
    types.ModuleType,
    types.BuiltinFunctionType,
    enum.Enum,
    # values that never change, stored and loaded as equal values
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.tzinfo,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePath,
    re.Pattern,
)
_ATOM_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})
_EXACT_ATOMS = frozenset(
    {
        *_ATOM_TYPES,
        range,
        slice,
        type(Ellipsis),
        types.ModuleType,
        types.BuiltinFunctionType,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.Path,
        re.Pattern,
    }
)


def _atom(obj: Any) -> bool:
    """A value holding no changeable object: an exact built-in atom, an enum member (stored by name), or an
    installed library's subclass instance with no attributes of its own (``numpy.float64``). A subclass carrying
    attributes, or one the notebook defines (its class is checked as any object's), is walked like any object."""
    kind = type(obj)
    if kind in _EXACT_ATOMS:
        return True
    if not isinstance(obj, _ATOMS):
        return False
    if isinstance(obj, enum.Enum):
        return True
    if getattr(obj, "__dict__", None) or kind.__module__ == "__main__":
        return False
    return not any(cls.__dict__.get("__slots__") for cls in kind.__mro__ if cls.__module__ != "builtins")


def _importable(func: Any) -> bool:
    """A function its module holds under its name (stored by reference, loaded as that very function)."""
    module = sys.modules.get(getattr(func, "__module__", None) or "")
    if module is None or func.__module__ == "__main__" or "<locals>" in func.__qualname__:
        return False
    target: Any = module
    for part in func.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is func


def _own_pickling(kind: type) -> bool:
    """The class says itself how it is stored (what it holds may be other than its attributes)."""
    return any(
        getattr(kind, method, None) is not getattr(object, method, None) for method in ("__reduce__", "__reduce_ex__")
    )


def _slots(kind: type) -> bool:
    return any("__slots__" in vars(cls) for cls in kind.__mro__)


def _quiet(function: Any) -> Any:
    """Run ``function`` with warnings silenced: reading a module's attributes can warn (deprecated ones)."""

    @functools.wraps(function)
    def quiet(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return function(*args, **kwargs)

    return quiet


class TooLarge(Exception):
    """The walk could not end: the bound on work was reached, or an object could not be looked into."""


class _Walk:
    """One walk's bounds. Used as a context manager, the garbage collector's passes in the walking thread do not
    count against its time: a collection of a large heap can take a good part of a second in a long-lived kernel,
    whatever the values walked."""

    def __init__(self, namespace: dict[str, Any] | None, limit: int, seconds: float | None = None) -> None:
        self.namespace = namespace
        self.left = limit
        self.deadline = time.thread_time() + (TIME_LIMIT if seconds is None else seconds)  # not other threads' time
        self.thread = threading.get_ident()
        self.collecting: float | None = None  # thread time a collection in this thread started at
        self.clock = 0  # charges since the clock was last read
        self.notebook = False  # a function or class of the notebook found that is not the kernel's own
        self.buffers: list[Buffer] = []  # memory of the arrays, frames and tensors reached (since last taken)
        self.cow: bool | None = None  # pandas' copy-on-write mode, read at the first pandas object

    def __enter__(self) -> _Walk:
        gc.callbacks.append(self._collection)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._collection)

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        """A collection's time moves the deadline on (a pause of the walk, not its work)."""
        if threading.get_ident() != self.thread:
            return
        if phase == "start":
            self.collecting = time.thread_time()
        elif self.collecting is not None:
            self.deadline += time.thread_time() - self.collecting
            self.collecting = None

    def take_buffers(self) -> list[Buffer]:
        found, self.buffers = self.buffers, []
        return found

    def charge(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge("its values are too large to check for shared objects")
        self.clock += n
        if self.clock >= 512:
            self.clock = 0
            if time.thread_time() > self.deadline:
                raise TooLarge("its values take too long to check for shared objects")

    def identities(self, value: Any) -> set[int]:
        """Ids of the changeable objects reachable from ``value`` (an array counts by the memory it uses)."""
        found: set[int] = set()
        seen: set[int] = set()
        stack = [value]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            try:  # everything about the object, its type included, may raise (a ``__class__`` property)
                if type(obj) in _EXACT_ATOMS or _atom(obj):
                    continue
                seen.add(id(obj))
                self.charge()
                stack.extend(self._children(obj, found))
            except TooLarge:
                raise
            except Exception as exc:  # noqa: BLE001 - an object that cannot be looked into: not sure
                raise TooLarge(f"a {type(obj).__qualname__} cannot be looked into ({type(exc).__name__})") from None
        return found

    def _children(self, obj: Any, found: set[int]) -> Iterable[Any]:
        kind = type(obj)
        if kind is list or kind is set:  # the common cases first, exact types only (subclasses have attributes)
            found.add(id(obj))
            return self._items(obj)
        if kind is dict:
            found.add(id(obj))
            return [*self._items(obj.keys()), *self._items(obj.values())]
        if kind is tuple:
            return self._items(obj)
        if isinstance(obj, types.FunctionType):
            if obj.__module__ == "__main__" and (self.namespace is None or obj.__globals__ is not self.namespace):
                self.notebook = True
            if _importable(obj):  # loaded by reference: the very function
                return ()
            found.add(id(obj))  # loaded by value: what its closure and defaults hold are copied with it
            return [*(obj.__closure__ or ()), *(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
        if isinstance(obj, types.CellType):
            found.add(id(obj))
            try:
                return [obj.cell_contents]
            except ValueError:  # an empty cell
                return ()
        if isinstance(obj, type):
            self._check_class(obj)
            return ()
        self._check_class(type(obj))
        module = type(obj).__module__ or ""
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.dtype):
            return ()
        if np is not None and isinstance(obj, np.generic):
            if getattr(getattr(obj, "dtype", None), "hasobject", False):
                raise TooLarge(f"a {type(obj).__qualname__} holding objects cannot be checked for shared objects")
            return ()
        if np is not None and isinstance(obj, np.ndarray):
            root = obj  # views and slices count by the object owning their memory
            while getattr(root, "base", None) is not None:
                root = root.base
            found.add(id(root))
            self.buffers.extend(array_buffers(obj, id(obj)))
            if getattr(getattr(obj, "dtype", None), "hasobject", False):
                self.charge(obj.size)
                return self._items(list(obj.flat))
            return ()
        if module.startswith("pandas"):
            return self._pandas(obj, found)
        torch = sys.modules.get("torch")
        if torch is not None and kind in (torch.Tensor, torch.nn.Parameter):
            if obj.requires_grad and (obj.grad_fn is not None or obj.grad is not None):
                raise TooLarge("a Tensor holding gradients cannot be loaded as it is")
            found.add(id(obj))
            self.buffers.extend(tensor_buffers(obj))
            return self._attributes(obj)
        if isinstance(obj, (tuple, frozenset)):
            if kind is tuple or kind is frozenset:
                return self._items(obj)
            return [*self._items(obj), *self._attributes(obj)]  # a named tuple or a subclass: its attributes too
        if isinstance(obj, functools.partial):
            found.add(id(obj))
            return [obj.func, obj.args, obj.keywords, *self._attributes(obj)]
        if isinstance(obj, types.MethodType):
            return [obj.__self__, obj.__func__]
        if kind in (bytearray, array.array):  # changeable, holding only numbers
            found.add(id(obj))
            return ()
        if kind is memoryview:
            found.add(id(obj))
            return [obj.obj]
        if kind is collections.deque:
            found.add(id(obj))
            return self._items(obj)
        if _own_pickling(kind) or (not hasattr(obj, "__dict__") and not _slots(kind)):
            # stored in a way of its own (or a C object): what it holds cannot be told from here
            raise TooLarge(f"a {kind.__qualname__} cannot be checked for shared objects")
        found.add(id(obj))
        children: list[Any] = []
        if isinstance(obj, dict):
            children.extend(self._items(obj.keys()))
            children.extend(self._items(obj.values()))
        elif isinstance(obj, (list, set)):
            children.extend(self._items(obj))
        elif isinstance(obj, (collections.deque, bytearray, array.array, memoryview)):
            raise TooLarge(f"a {kind.__qualname__} cannot be checked for shared objects")
        children.extend(self._attributes(obj))
        return children

    def _pandas(self, obj: Any, found: set[int]) -> Iterable[Any]:
        """A DataFrame, Series or Index counts as one object; its object columns' items are walked."""
        import pandas as pd

        if isinstance(obj, (pd.Timestamp, pd.Timedelta, pd.Period, pd.Interval, type(pd.NaT))):
            return ()  # values that never change
        found.add(id(obj))
        if self.cow is None:
            self.cow = copy_on_write()
        self.buffers.extend(pandas_buffers(obj, self.cow))
        if isinstance(obj, pd.DataFrame):
            columns = [obj.iloc[:, i] for i, dtype in enumerate(obj.dtypes) if getattr(dtype, "hasobject", True)]
        elif isinstance(obj, (pd.Series, pd.Index)):
            columns = [obj] if getattr(obj.dtype, "hasobject", True) else []
        else:
            raise TooLarge(f"a {type(obj).__qualname__} cannot be checked for shared objects")
        children: list[Any] = []
        for column in columns:
            if getattr(column.dtype, "kind", "") == "O":
                # its array as it is: the items' types told in C (a 64th of a row each when all are numbers or
                # strings, 3x faster than a list of them), so a large frame of strings is walked, not given up on
                children.extend(self._items(column.to_numpy()))
            else:
                self.charge(len(column))
                children.extend(self._items(list(column)))
        return children

    def _items(self, items: Any) -> list[Any]:
        """The items worth walking: none when all are numbers or strings (told in C, without a Python loop)."""
        kinds = set(map(type, items))
        self.charge(len(items) // 64)
        if kinds <= _ATOM_TYPES:
            return []
        self.charge(len(items))
        return list(items)

    def _attributes(self, obj: Any) -> list[Any]:
        found: list[Any] = []
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            found.extend(attrs.values())
            self.charge(len(attrs))
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__"):
                    value = getattr(obj, slot, None)
                    if value is not None:
                        found.append(value)
        return found

    def _check_class(self, cls: type) -> None:
        if cls.__module__ == "__main__" and (self.namespace is None or self.namespace.get(cls.__qualname__) is not cls):
            self.notebook = True


def shared(assigned: dict[str, Any], read: dict[str, Any], limit: int | None = None) -> tuple[str, str, bool] | None:
    """Two names, one of them in ``assigned``, whose values reach one changeable object: (name, other name, the two
    are bound to that very object). Raises :class:`TooLarge` when the walk would take too long."""
    owner: dict[int, str] = {}
    tops: dict[str, int] = {}
    with _Walk(None, limit or LIMIT) as walk:
        for name, value in [*read.items(), *assigned.items()]:
            tops[name] = id(value)
            for ident in walk.identities(value):
                first = owner.setdefault(ident, name)
                if first != name and name in assigned:
                    return name, first, tops.get(first) == id(value) == ident
    return None


def notebook_code(values: dict[str, Any], namespace: dict[str, Any], limit: int | None = None) -> str | None:
    """The first name whose value holds, anywhere inside it, a function or class of the notebook (module
    ``__main__``), or an instance of such a class, other than the kernel's own. Raises :class:`TooLarge`."""
    for name, value in values.items():
        with _Walk(namespace, limit or LIMIT) as walk:
            walk.identities(value)
        if walk.notebook:
            return name
    return None


def paths(root: Any, depth: int = 4, limit: int = 10_000) -> dict[int, list[str | int]]:
    """Id -> shortest subscripts from ``root`` of the changeable objects reached through dicts (string or
    integer keys), lists and tuples, within ``depth`` subscripts and about ``limit`` items."""
    found: dict[int, list[str | int]] = {id(root): []}
    level: list[tuple[Any, list[str | int]]] = [(root, [])]
    for _ in range(depth):
        following: list[tuple[Any, list[str | int]]] = []
        for obj, path in level:
            if type(obj) is dict:
                items = [(k, v) for k, v in obj.items() if type(k) in (str, int)]
            elif type(obj) in (list, tuple):
                items = list(enumerate(obj))
            else:
                continue
            limit -= len(items)
            if limit < 0:
                return found
            for key, item in items:
                if type(item) in _ATOM_TYPES or id(item) in found:
                    continue
                found[id(item)] = [*path, key]
                following.append((item, found[id(item)]))
        level = following
    return found


def follow(root: Any, path: list[Any]) -> Any:
    """The part of ``root`` a path of :func:`paths` or :func:`.reuse_parts.parts` names."""
    for key in path:
        root = apply(root, key)
    return root


@_quiet
def _module_values(modules: Iterable[str]) -> dict[int, tuple[str, Any]]:
    """Id -> ("module.name", value) of the changeable values held at the top of the named modules and their submodules
    (functions and classes are stored by reference, so they are left out)."""
    wanted = tuple(modules)
    held: dict[int, tuple[str, Any]] = {}
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == m or module_name.startswith(m + ".") for m in wanted):
            continue
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if not isinstance(value, (*_ATOMS, type, types.FunctionType)):
                held.setdefault(id(value), (f"{module_name}.{name}", value))
    return held


@_quiet
def _module_buffers(held: dict[int, tuple[str, Any]]) -> list[tuple[str, Buffer]]:
    """The buffers of the arrays, frames and tensors among the modules' values (the values themselves, not what
    they hold)."""
    np, pd, torch = (sys.modules.get(m) for m in ("numpy", "pandas", "torch"))
    found: list[tuple[str, Buffer]] = []
    for label, value in held.values():
        if np is not None and isinstance(value, np.ndarray):
            buffers = array_buffers(value, id(value))
        elif pd is not None and isinstance(value, (pd.DataFrame, pd.Series, pd.Index)):
            buffers = pandas_buffers(value, copy_on_write())
        elif torch is not None and isinstance(value, torch.Tensor):
            buffers = tensor_buffers(value)
        else:
            continue
        found.extend((label, b) for b in buffers)
    return found


def _local(modules: Iterable[str]) -> list[str]:
    """The notebook's own modules among ``modules`` and those they import (installed packages are left out: walking
    inside their values costs 20-130 ms for numpy, pandas, sklearn and torch)."""
    from .cache_key import local_modules

    return list(local_modules(tuple(modules)))


@_quiet
def _module_contents(modules: Iterable[str]) -> dict[int, str]:
    """Id -> "module.name" of the changeable objects held inside the values at the top of the named modules (and
    their submodules): dicts, lists, tuples, sets, deques and objects' attributes, within :data:`MODULE_LIMIT`
    objects. Raises :class:`TooLarge` past it."""
    wanted = tuple(modules)
    found: dict[int, str] = {}
    seen: set[int] = set()
    left = MODULE_LIMIT
    np = sys.modules.get("numpy")
    ndarray = np.ndarray if np is not None else None
    skip = (*_ATOMS, type, types.FunctionType)
    for module_name, module in list(sys.modules.items()):
        if module is None or not any(module_name == m or module_name.startswith(m + ".") for m in wanted):
            continue
        for name, top in list(getattr(module, "__dict__", {}).items()):
            if isinstance(top, skip):
                continue
            label = f"{module_name}.{name}"
            stack = [top]
            while stack:
                obj = stack.pop()
                kind = type(obj)
                if kind in _ATOM_TYPES or id(obj) in seen:
                    continue
                seen.add(id(obj))
                left -= 1
                if left < 0:
                    raise TooLarge("the modules it imports hold too much to check for its values inside them")
                if kind is dict:
                    found.setdefault(id(obj), label)
                    stack.extend(obj.values())
                elif kind is list or kind is set:
                    found.setdefault(id(obj), label)
                    stack.extend(obj)
                elif kind is tuple or kind is frozenset:
                    stack.extend(obj)
                else:
                    try:
                        stack.extend(_module_part(obj, found, label, ndarray, skip))
                    except Exception:  # noqa: BLE001 - what it holds is not reached by subscripts or attributes
                        continue
    return found


def _module_part(obj: Any, found: dict[int, str], label: str, ndarray: Any, skip: tuple[type, ...]) -> list[Any]:
    """Note ``obj`` (an array by the memory it uses) as held by the module value ``label``; what it holds."""
    if isinstance(obj, skip):
        return []
    if ndarray is not None and isinstance(obj, ndarray):
        root = obj
        while getattr(root, "base", None) is not None:
            root = root.base
        found.setdefault(id(root), label)
        return []
    found.setdefault(id(obj), label)
    children: list[Any] = []
    if isinstance(obj, dict):
        children.extend(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        children.extend(obj)
    attrs = getattr(obj, "__dict__", None)
    if type(attrs) is dict:
        children.extend(attrs.values())
    return children


def links(
    assigned: dict[str, Any], read: dict[str, Any], modules: Iterable[str] = ()
) -> tuple[str | None, dict[str, list[str | int]]]:
    """(why the cell's results cannot be reused: values that share an object, else None; name -> where its object
    is found inside another value). A name bound to another value's object, or to a part of it reached by
    subscripts (``d`` after ``for d in [train, test]``, ``part = nested["rows"]``), is loaded as that object.

    A value holding a changeable value of one of ``modules`` (imported by the cell) cannot be reused: loaded from
    the store it would be a copy, not the module's. Each value is walked once, within :data:`LIMIT` objects and
    :data:`TIME_LIMIT` seconds in all."""
    read = {n: v for n, v in read.items() if n not in assigned}
    tops = {**read, **assigned}
    aliases: dict[str, list[str | int]] = {}
    walk = _Walk(None, LIMIT)
    ids: dict[str, set[int]] = {}
    index: dict[str, dict[int, list[str | int]]] = {}

    def path_in(part: Any, whole: str) -> list[str | int] | None:
        if whole not in index:
            index[whole] = paths(tops[whole], limit=LIMIT)
            walk.charge(len(index[whole]))
        return index[whole].get(id(part))

    owner: dict[int, str] = {}
    memory: list[tuple[str, Buffer]] = []  # (name, buffer) of every value walked, modules' values included
    with walk:
        try:
            for name, value in read.items():
                ids[name] = walk.identities(value)
                memory.extend((name, b) for b in walk.take_buffers())
                for ident in ids[name]:
                    owner.setdefault(ident, name)
            held = _module_values(modules) if modules else {}
            inner: dict[int, str] | None = None  # ids inside local modules' values, found when needed
            memory.extend(_module_buffers(held))
            for name, value in assigned.items():
                ids[name] = walk.identities(value)
                memory.extend((name, b) for b in walk.take_buffers())
                inside = next((held[i][0] for i in ids[name] if i in held), None)
                if inside is None and ids[name] and modules:  # a part of a local module's value (mod.CONFIG["x"])
                    inner = _module_contents(_local(modules)) if inner is None else inner
                    inside = next((inner[i] for i in ids[name] if i in inner), None)
                if inside is not None:
                    return (
                        f"{name!r} holds {inside}; loaded from the store it would be a copy, not the module's",
                        aliases,
                    )
                clashes: dict[str, int] = {}  # earlier value -> an object this one shares with it (one pass)
                for ident in ids[name]:
                    first = owner.get(ident)
                    if first is not None and first != name:
                        clashes.setdefault(first, ident)
                for first, ident in clashes.items():
                    walk.charge()
                    path = path_in(value, first)
                    if path is not None:  # this name is a part of an earlier value
                        aliases[name] = [first, *path]
                        break
                    path = path_in(tops[first], name) if first in assigned else None
                    if path is None:
                        if id(tops[first]) == id(value) == ident:
                            return (
                                f"{name!r} and {first!r} are one object; loaded from the store they would be two",
                                aliases,
                            )
                        return (
                            f"{name!r} and {first!r} hold a shared object; loaded from the store they would hold two"
                            " copies",
                            aliases,
                        )
                    aliases[first] = [name, *path]  # the earlier value is a part of this one: it stops owning
                    for i in ids[first]:
                        if owner.get(i) == first:
                            del owner[i]
                if name not in aliases:
                    for ident in ids[name]:
                        owner.setdefault(ident, name)
            walk.charge(len(memory))
            pair = (
                overlap(memory, lambda a, b: a in assigned or b in assigned, walk.charge) if len(memory) > 1 else None
            )
            if pair is not None:  # columns taken from a frame load as those columns of the loaded frame
                found = parts(assigned, tops, set(aliases))
                if found:
                    aliases.update(found)
                    memory = [(n, b) for n, b in memory if n not in found]
                    pair = overlap(memory, lambda a, b: a in assigned or b in assigned, walk.charge)
        except TooLarge as exc:
            return str(exc), aliases
        except Exception as exc:  # noqa: BLE001 - a buffer whose memory cannot be told: not sure
            return f"its values cannot be checked for shared objects ({type(exc).__name__})", aliases
    if pair is None:
        return None, aliases
    name, other = pair if pair[0] in assigned else pair[::-1]
    if name == other:
        return (
            f"{name!r} holds two arrays or frames over the same memory; loaded from the store they would be two copies",
            aliases,
        )
    if other in tops:
        return f"{name!r} and {other!r} share memory; loaded from the store they would be two copies", aliases
    return f"{name!r} shares memory with {other}; loaded from the store it would be a copy, not the module's", aliases
