"""Keras / TensorFlow models as a native ``.keras`` file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import MarshalError, Written, mro_has, versions

FORMAT = "keras"
FILE = "model.keras"


def claims(obj: Any) -> bool:
    if not any(m in sys.modules for m in ("keras", "tensorflow", "tf_keras")):
        return False
    return mro_has(obj, ("keras", "tf_keras", "tensorflow"), ("Model",))


_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras", "tensorflow")


def _unloadable(obj: Any) -> list[str]:
    """Names of the model's classes that ``load_model`` could not find: custom classes not registered."""
    try:
        from keras import saving

        saving.get_registered_name, saving.get_registered_object  # noqa: B018 - Keras 2.13+ and 3 have both
    except (ImportError, AttributeError):
        return []  # no registry to ask: the save itself decides
    layers = obj._flatten_layers(include_self=True, recursive=True) if hasattr(obj, "_flatten_layers") else [obj]
    missing = []
    for layer in layers:
        cls = type(layer)
        if cls.__module__.split(".")[0] in _KERAS_PACKAGES:
            continue
        if saving.get_registered_object(saving.get_registered_name(cls)) is not cls and cls.__name__ not in missing:
            missing.append(cls.__name__)
    return missing


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    if "keras" in sys.modules and (missing := _unloadable(obj)):
        raise MarshalError(
            f"cannot store variable {name!r} of type {type(obj).__name__}: Keras could not load it back (class "
            f"{', '.join(missing)} is not registered); decorate it with @keras.saving.register_keras_serializable()"
        )
    obj.save(str(directory / FILE))
    return {}, versions("keras", "tensorflow"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    try:
        import keras
    except ImportError:
        from tensorflow import keras  # type: ignore[no-redef]
    return keras.models.load_model(str(directory / FILE))
