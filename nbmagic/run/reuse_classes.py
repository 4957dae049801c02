"""The notebook's classes a ``%%step`` cell reads, seen before and after it runs: a reuse does not set their attributes.

``Cfg.lr = 0.5`` in a step changes the class itself, which no stored value carries: reused, the kernel would keep
``Cfg.lr == 0.1``. :func:`class_state` notes each class's own attributes other than functions (by object and
content); :func:`changed_class` names the first one the run changed.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

_CODE = (types.FunctionType, staticmethod, classmethod, property)


_BY_IDENTITY = frozenset({"_abc", "_thread", "threading"})  # an ABC's registry, locks: no value, told apart by object


def _attributes(cls: type) -> tuple[Any, ...]:
    from ..runtime.step import fingerprint

    return tuple(
        (key, id(value), "" if type(value).__module__ in _BY_IDENTITY else fingerprint(value))
        for key, value in sorted(vars(cls).items())
        if not (key.startswith("__") and key.endswith("__")) and not isinstance(value, _CODE)
    )


def class_state(namespace: dict[str, Any], names: Iterable[str]) -> dict[str, tuple[type, tuple[Any, ...]]]:
    """Qualified name -> (class, its attributes) of the notebook classes (module ``__main__``) among ``names``'
    values, and their notebook base classes."""
    state: dict[str, tuple[type, tuple[Any, ...]]] = {}
    for name in names:
        value = namespace.get(name)
        if not isinstance(value, type) or value.__module__ != "__main__":
            continue
        for cls in value.__mro__:
            if cls.__module__ == "__main__" and cls.__qualname__ not in state:
                state[cls.__qualname__] = (cls, _attributes(cls))
    return state


def changed_class(before: dict[str, tuple[type, tuple[Any, ...]]]) -> str | None:
    """The first class whose attributes the run set, deleted or changed in place (one it cannot fingerprint
    counts as changed)."""
    for name, (cls, attributes) in before.items():
        if any(fp is None for _, _, fp in attributes) or _attributes(cls) != attributes:
            return name
    return None
