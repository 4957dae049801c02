"""The last resort for values no other format takes: dill (the package warns with a ``MarshalWarning``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .base import Written, versions

FORMAT = "dill"
FILE = "value.dill"


def write(obj: Any, directory: Path, algorithm: str, name: str) -> Written:
    import dill

    try:
        with open(directory / FILE, "wb") as f:
            dill.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL, recurse=True)
    except Exception:  # noqa: BLE001 - recurse=True fails on some objects where the default works
        with open(directory / FILE, "wb") as f:
            dill.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {}, versions("dill"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import dill

    with open(directory / FILE, "rb") as f:
        return dill.load(f)
