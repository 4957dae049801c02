"""Find the notebook file the kernel runs, and read its code cells."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
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


VSCODE_CELL_SCHEME = "vscode-notebook-cell"


def vscode_notebook(cell_ids: list[str]) -> Path | None:
    """The notebook path inside VS Code's ``vscode-notebook-cell:`` cell ids (the file as the editor sees it)."""
    for cell_id in reversed(cell_ids):
        parts = urllib.parse.urlsplit(cell_id)
        if parts.scheme != VSCODE_CELL_SCHEME:
            continue
        path = urllib.parse.unquote(parts.path)
        if len(path) > 2 and path[0] == "/" and path[2] == ":":  # /c:/Users/... on Windows
            path = path[1:]
        if path.endswith(".ipynb"):
            return Path(path)
    return None


def kernel_id() -> str | None:
    """This kernel's id, from its connection file name (``kernel-<id>.json``); None outside a kernel."""
    try:
        from ipykernel.connect import get_connection_file

        name = Path(get_connection_file()).name
    except Exception:  # not in a kernel, or ipykernel without an app
        return None
    if name.startswith("kernel-") and name.endswith(".json"):
        return name[len("kernel-") : -len(".json")]
    return None


def find_through_server(kernel: str | None, runtime_dir: str | None = None, timeout: float = 1.0) -> Path | None:
    """Ask the running Jupyter servers' ``/api/sessions`` which notebook runs ``kernel`` (classic Notebook 6 and
    nbclassic tell the kernel nothing); None when no server knows it."""
    if not kernel:
        return None
    if runtime_dir is None:
        try:
            from jupyter_core.paths import jupyter_runtime_dir

            runtime_dir = jupyter_runtime_dir()
        except ImportError:
            return None
    folder = Path(runtime_dir)
    servers = sorted(folder.glob("jpserver-*.json")) + sorted(folder.glob("nbserver-*.json"))
    for server_file in servers:
        try:
            server = json.loads(server_file.read_text())
            request = urllib.request.Request(urllib.parse.urljoin(server["url"], "api/sessions"))
            if server.get("token"):
                request.add_header("Authorization", f"token {server['token']}")
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's own server
                sessions = json.loads(response.read())
        except (OSError, ValueError, KeyError):
            continue  # a stale runtime file, a server that wants a password: try the next
        for session in sessions:
            if (session.get("kernel") or {}).get("id") != kernel:
                continue
            relative = (session.get("notebook") or {}).get("path") or session.get("path") or ""
            root = Path(server.get("root_dir") or server.get("notebook_dir") or ".").expanduser()
            if relative.endswith(".ipynb") and (root / relative).is_file():
                return (root / relative).resolve()
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
