"""Recognise what kind of model an object is, without importing ML libraries that are not already in use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbmagic.serve.errors import ServeError


@dataclass(frozen=True)
class ModelKind:
    """What a model is: ``kind`` is ours, ``model_format`` the KServe modelFormat name (None: no built-in runtime)."""

    kind: str
    model_format: str | None
    type_name: str


# (kind, KServe modelFormat, module prefixes of any class in the object's MRO), most specific first:
# xgboost and lightgbm estimators are also scikit-learn estimators.
_KINDS: list[tuple[str, str | None, tuple[str, ...]]] = [
    ("xgboost", "xgboost", ("xgboost",)),
    ("lightgbm", "lightgbm", ("lightgbm",)),
    ("keras", "tensorflow", ("keras", "tensorflow", "tf_keras")),
    ("pytorch", "pytorch", ("torch",)),
    ("sklearn", "sklearn", ("sklearn",)),
]


def _modules(obj: Any) -> list[str]:
    return [getattr(cls, "__module__", "") or "" for cls in type(obj).__mro__]


def type_name(obj: Any) -> str:
    """``module.Class`` of an object, for messages."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__


def detect(obj: Any, name: str = "model") -> ModelKind:
    """The kind of ``obj``; raises ServeError naming ``name`` when it is not a model."""
    if isinstance(obj, type):
        raise ServeError(f"'{name}' is the class {obj.__qualname__}, not a fitted model instance")
    modules = _modules(obj)
    for kind, fmt, prefixes in _KINDS:
        if any(m == p or m.startswith(p + ".") for m in modules for p in prefixes):
            if kind == "sklearn":
                _check_fitted(obj, name)
            if kind == "pytorch" and not callable(obj):
                break
            return ModelKind(kind, fmt, type_name(obj))
    if callable(getattr(obj, "predict", None)):
        return ModelKind("predict", None, type_name(obj))
    if callable(obj):
        return ModelKind("callable", None, type_name(obj))
    raise ServeError(f"'{name}' ({type_name(obj)}) is not a model: it has no predict() method and is not callable")


def _check_fitted(obj: Any, name: str) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not callable(getattr(obj, "predict", None)) and not callable(getattr(obj, "transform", None)):
        raise ServeError(f"'{name}' ({type_name(obj)}) is a scikit-learn object without predict()")
    try:
        check_is_fitted(obj)
    except NotFittedError:
        raise ServeError(f"'{name}' ({type_name(obj)}) is not fitted: call fit() before serving it") from None
    except TypeError:
        pass
