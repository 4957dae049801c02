"""Find the notebook file the kernel runs, and read its code cells."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from .cells import RawCell


def find_notebook(user_ns: Mapping[str, Any], explicit: str | None = None) -> Path | None:
    """The notebook file: ``--notebook``, VS Code's ``__vsc_ipynb_file__``, or Jupyter's session path."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PipelineError(f"--notebook {explicit}: no such file")
        return path.resolve()
    candidates = [
        user_ns.get("__vsc_ipynb_file__"),
        user_ns.get("__session__"),
        os.environ.get("JPY_SESSION_NAME"),
    ]
    for value in candidates:
        if not value or not isinstance(value, str) or not value.endswith(".ipynb"):
            continue
        path = Path(value).expanduser()
        # Jupyter's session path may be relative to the server's root, while the kernel runs in the notebook's folder
        for option in (path, Path.cwd() / path, Path.cwd() / path.name):
            if option.is_file():
                return option.resolve()
    return None


def read_notebook(path: Path) -> list[RawCell]:
    """The notebook's code cells in order, with their ids."""
    notebook = _read_v4(path)
    cells: list[RawCell] = []
    for number, cell in enumerate(notebook["cells"], start=1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        cells.append(RawCell(source=source, index=number, label=f"{path.name} cell {number}", cell_id=cell.get("id")))
    return cells


def _read_v4(path: Path) -> dict[str, Any]:
    """The notebook as nbformat 4 JSON: read directly (importing nbformat takes seconds), older versions converted."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("nbformat") == 4 and isinstance(data.get("cells"), list):
            return data
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read notebook {path}: {exc}") from None
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:  # nbformat raises several types for unreadable files
        raise PipelineError(f"cannot read notebook {path}: {exc}") from None
