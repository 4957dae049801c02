"""Keras / TensorFlow models as a native ``.keras`` file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import Written, mro_has, versions

FORMAT = "keras"
FILE = "model.keras"


def claims(obj: Any) -> bool:
    if not any(m in sys.modules for m in ("keras", "tensorflow", "tf_keras")):
        return False
    return mro_has(obj, ("keras", "tf_keras", "tensorflow"), ("Model",))


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    obj.save(str(directory / FILE))
    return {}, versions("keras", "tensorflow"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    try:
        import keras
    except ImportError:
        from tensorflow import keras  # type: ignore[no-redef]
    return keras.models.load_model(str(directory / FILE))
