"""LightGBM boosters as the native text model, ``model.bst``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import Written, mro_has, versions

FORMAT = "lightgbm"
FILE = "model.bst"


def claims(obj: Any) -> bool:
    return "lightgbm" in sys.modules and mro_has(obj, ("lightgbm",), ("Booster",))


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save_model(str(directory / FILE))
    return {}, versions("lightgbm"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import lightgbm

    return lightgbm.Booster(model_file=str(directory / FILE))
