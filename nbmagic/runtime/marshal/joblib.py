"""scikit-learn estimators and other sklearn-like objects (fit + predict/transform + get_params) with joblib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Written, mods, versions

FORMAT = "joblib"
FILE = "value.joblib"


def is_sklearn(obj: Any) -> bool:
    t = type(obj)
    return t.__module__ != "__main__" and any(m == "sklearn" or m.startswith("sklearn.") for m in mods(obj))


def claims(obj: Any) -> bool:
    t = type(obj)
    if t.__module__ == "__main__":
        return False
    if is_sklearn(obj):
        return True
    has = lambda attr: callable(getattr(t, attr, None))  # noqa: E731
    return has("fit") and has("get_params") and (has("predict") or has("transform"))


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import joblib

    joblib.dump(obj, directory / FILE)
    root = type(obj).__module__.split(".")[0]
    return {}, versions("joblib", "sklearn", "numpy", root), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import joblib

    return joblib.load(directory / FILE)
