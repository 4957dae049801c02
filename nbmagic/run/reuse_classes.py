"""The notebook's classes, seen before and after a ``%%step`` cell runs: a reuse does not set their attributes.

``Cfg.lr = 0.5`` in a step (or in a notebook function it calls, or through ``type(obj)``) changes the class itself,
which no stored value carries: reused, the kernel would keep ``Cfg.lr == 0.1``. :func:`class_state` notes every
notebook class (module ``__main__``) among the kernel's values, the classes of the values the cell reads, their
notebook bases and metaclasses: functions, properties and dunders by object, other attributes by object and
content. :func:`changed_class` names the first one the run changed.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

_CODE = (types.FunctionType, staticmethod, classmethod, property)


_BY_IDENTITY = frozenset({"_abc", "_thread", "threading"})  # an ABC's registry, locks: no value, told apart by object
_CACHES = frozenset({"__slotnames__"})  # set by copyreg when an instance is pickled (stored): no change of the class
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None)})  # the object is the value

State = dict[int, tuple[type, str, bool, tuple[Any, ...]]]  # id(class) -> (class, name, strict, its attributes)
_SIZED = (list, dict, set, bytearray)
_UNREADABLE = object()  # the mark of a class that could not be read: never equal to a later reading


def _attributes(cls: type, strict: bool) -> tuple[Any, ...]:
    """``(key, id, mark)`` of each attribute. Strict (a class the cell reads): other values by their content
    (``None`` when it cannot be told, then compared by object). Not strict: by object, and the length of a
    list, dict or set (an item appended by a function the step calls), so large class-level tables cost nothing."""
    from ..runtime.step import fingerprint

    def mark(key: str, value: Any) -> Any:
        if (
            type(value) in _IMMUTABLE
            or (key.startswith("__") and key.endswith("__"))
            or isinstance(value, _CODE)
            or hasattr(type(value), "__get__")  # descriptors (cached_property...): code, told apart by object
            or type(value).__module__ in _BY_IDENTITY
        ):
            return ""
        if not strict:
            return len(value) if type(value) in _SIZED else ""
        return fingerprint(value)

    return tuple((key, id(value), mark(key, value)) for key, value in sorted(vars(cls).items()) if key not in _CACHES)


def _is_class(value: Any) -> bool:
    return issubclass(type(value), type)  # never asks the value (its ``__class__`` may raise)


def _notebook(cls: Any) -> bool:
    return _is_class(cls) and type.__dict__["__module__"].__get__(cls) == "__main__"


def _add(state: State, cls: type, strict: bool) -> None:
    for klass in cls.__mro__:
        for one in (klass, type(klass)):
            if _notebook(one) and (id(one) not in state or (strict and not state[id(one)][2])):
                state[id(one)] = (one, one.__qualname__, strict, _attributes(one, strict))


def class_state(namespace: dict[str, Any], names: Iterable[str]) -> State:
    """Every notebook class among the kernel's values, and the class of each of ``names``' values, with their
    notebook bases and metaclasses. Those ``names`` reach (``strict``) are compared by their attributes' content,
    the others by object (see :func:`_attributes`)."""
    state: State = {}
    for name in names:
        value = namespace.get(name)
        cls = value if _is_class(value) else type(value)
        try:
            if _notebook(cls) or _notebook(type(cls)):
                _add(state, cls, True)
        except Exception:  # noqa: BLE001 - a class that cannot be read: not sure, so counted as changed
            state[id(cls)] = (cls, type.__dict__["__qualname__"].__get__(cls), True, (("", 0, _UNREADABLE),))
    for value in list(namespace.values()):
        cls = value if _is_class(value) else type(value)
        try:
            if _notebook(cls) or _notebook(type(cls)):
                _add(state, cls, False)
        except Exception:  # noqa: BLE001 - not one the cell reads: compared as far as it can be
            continue
    return state


def changed_class(before: State) -> str | None:
    """The first class whose attributes the run set, deleted or changed in place; a class that cannot be read
    counts as changed."""
    for cls, name, strict, attributes in before.values():
        try:
            if _attributes(cls, strict) != attributes:
                return name
        except Exception:  # noqa: BLE001 - cannot be read now: not sure
            return name
    return None
