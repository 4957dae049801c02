"""Local modules written for a test: a folder that is the working directory and first on the import path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def local_module_files(
    tmp_path: Path, monkeypatch: Any, files: dict[str, str], modules: tuple[str, ...]
) -> Iterator[None]:
    """``tmp_path`` as working directory and first import path, holding ``files`` (path under it -> text); the
    ``modules`` they make are dropped from ``sys.modules`` on leaving, so later tests import them afresh."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    try:
        yield
    finally:
        for module in modules:
            sys.modules.pop(module, None)
