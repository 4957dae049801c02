"""XGBoost boosters and sklearn wrappers as the native JSON model (the class is recorded to rebuild it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import Written, mro_has, resolve, versions

FORMAT = "xgboost"
FILE = "model.json"


def claims(obj: Any) -> bool:
    return "xgboost" in sys.modules and mro_has(obj, ("xgboost",), ("Booster", "XGBModel"))


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save_model(str(directory / FILE))
    return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}, versions("xgboost"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import xgboost  # noqa: F401

    model = resolve(meta["class"])()
    model.load_model(str(directory / FILE))
    return model
