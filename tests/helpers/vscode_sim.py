"""A small stand-in for VS Code's Jupyter extension, speaking the Jupyter protocol through jupyter_client.

What it copies from the extension: every cell is sent as an ``execute_request`` whose metadata carries
``cellId`` = the cell's ``vscode-notebook-cell:`` URI (a per-editor handle in the fragment, stable while the
notebook is open, whatever the cell's position or source) plus the cell's own nbformat metadata; startup code
assigns ``__vsc_ipynb_file__`` silently (not for a remote kernel); the editor's buffer differs from the file
until it is saved.
"""

from __future__ import annotations

import base64
import itertools
import os
import queue
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel
from nbformat.v4 import new_code_cell, new_notebook

_HANDLES = itertools.count(1)
_LENGTH_PREFIX = "WXYZabcdef"


def cell_uri(notebook: Path, handle: int) -> str:
    """``vscode-notebook-cell:/path/demo.ipynb#W1sZmlsZQ==``-style URI, as VS Code builds it for a cell handle."""
    digits = _base7(handle)
    prefix = _LENGTH_PREFIX[len(digits) - 1] if len(digits) <= len(_LENGTH_PREFIX) else "z"
    fragment = f"{prefix}{digits}s{base64.b64encode(b'file').decode()}"
    return "vscode-notebook-cell:" + urllib.parse.quote(str(notebook)) + "#" + urllib.parse.quote(fragment)


def _base7(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 7)
        digits = str(rest) + digits
        if not number:
            return digits


@dataclass
class EditorCell:
    source: str
    handle: int = field(default_factory=lambda: next(_HANDLES))
    nb_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    metadata: dict = field(default_factory=dict)


class VSCodeNotebook:
    """A notebook open in the editor, with a kernel; ``remote`` = a kernel on another machine (no file path)."""

    def __init__(self, path: Path, remote: bool = False, client_path: Path | None = None) -> None:
        self.path = path
        self.remote = remote
        self.client_path = client_path or path  # where the editor's machine keeps the file
        notebook = nbformat.read(path, as_version=4)
        self.cells = [EditorCell(c.source, nb_id=c.get("id") or uuid.uuid4().hex[:8]) for c in notebook.cells]
        env = dict(os.environ)
        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, cwd=str(path.parent))
        if not remote:
            self._send(f"__vsc_ipynb_file__ = {str(path)!r}", silent=True)

    # -- the editor ------------------------------------------------------------------------
    def edit(self, index: int, source: str) -> None:
        self.cells[index].source = source

    def insert(self, index: int, source: str) -> None:
        self.cells.insert(index, EditorCell(source))

    def delete(self, index: int) -> None:
        del self.cells[index]

    def save(self) -> None:
        cells = []
        for cell in self.cells:
            saved = new_code_cell(cell.source)
            saved["id"] = cell.nb_id
            cells.append(saved)
        nbformat.write(new_notebook(cells=cells), self.path)

    # -- the kernel ------------------------------------------------------------------------
    def run(self, index: int) -> str:
        """Run one cell as VS Code does; the cell's text output (stdout, results, errors)."""
        cell = self.cells[index]
        metadata = {"cellId": cell_uri(self.client_path, cell.handle), **cell.metadata}
        return self._send(cell.source, metadata=metadata)

    def run_all(self) -> list[str]:
        return [self.run(i) for i in range(len(self.cells))]

    def execute(self, code: str) -> str:
        """Code typed in a new scratch cell (its own handle)."""
        cell = EditorCell(code)
        return self._send(code, metadata={"cellId": cell_uri(self.client_path, cell.handle)})

    def inspect(self, code: str) -> str:
        """Run code silently (not a cell: nothing is recorded); its printed output."""
        return self._send(code, silent=True)

    def _send(self, code: str, silent: bool = False, metadata: dict | None = None) -> str:
        content = {
            "code": code,
            "silent": silent,
            "store_history": not silent,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
        }
        message = self.client.session.msg("execute_request", content, metadata=metadata or {})
        self.client.shell_channel.send(message)
        msg_id = message["header"]["msg_id"]
        texts: list[str] = []
        while True:
            try:
                reply = self.client.get_iopub_msg(timeout=300)
            except queue.Empty:
                raise TimeoutError(f"no reply to {code[:40]!r}") from None
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            kind, body = reply["msg_type"], reply["content"]
            if kind == "stream":
                texts.append(body["text"])
            elif kind in ("execute_result", "display_data"):
                texts.append(body["data"].get("text/plain", ""))
            elif kind == "error":
                texts.append(f"{body['ename']}: {body['evalue']}")
            elif kind == "status" and body["execution_state"] == "idle":
                break
        self.client.get_shell_msg(timeout=60)
        return "".join(texts)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
