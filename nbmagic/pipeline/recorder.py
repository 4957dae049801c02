"""What the live kernel has run, cell by cell, merged with the notebook file when there is one."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .cells import CONFIG_MAGIC, METRICS_MAGIC, PARAMETERS_MAGIC, STEP_MAGIC, Notebook, RawCell, cell_magic, read_cells
from .notebook import read_notebook
from .settings import StepSettings


@dataclass
class Execution:
    source: str
    cell_id: str | None
    first: int  # first-execution order
    when: float  # time of the latest execution


def _parameter_names(body: str) -> set[str]:
    """Names a ``%%pipeline_parameters`` body assigns (empty if it does not parse)."""
    import ast

    try:
        tree = ast.parse(body)
    except SyntaxError:
        return set()
    return {
        target.id
        for statement in tree.body
        for target in (statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)])
        if isinstance(target, ast.Name)
    }


def _first_code_line(source: str) -> str:
    magic = cell_magic(source)
    body = magic[2] if magic else source
    return next((line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")), "")


def _part_number(key: tuple[str, str]) -> int:
    return int(key[1].split("#")[1]) if "#" in key[1] else 1


class Recorder:
    """Cells executed in this kernel; the source of truth when no notebook file is known."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, str], Execution] = {}
        self._count = 0
        self.notebook_path: Path | None = None
        self.defaults = StepSettings()

    @staticmethod
    def _key(source: str, cell_id: str | None) -> tuple[str, str]:
        if cell_id:
            return ("id", cell_id)
        magic = cell_magic(source)
        if magic and magic[0] == STEP_MAGIC:
            return ("step", magic[1].split()[0] if magic[1].split() else "")
        if magic and magic[0] == PARAMETERS_MAGIC:
            # the names it declares: re-running it with new values replaces it, another parameters cell adds to it
            return ("parameters", ",".join(sorted(_parameter_names(magic[2]))))
        if f"%{METRICS_MAGIC}" in source:
            return ("metrics", "")
        if f"%{CONFIG_MAGIC}" in source:
            return ("config", "")
        return ("code", hashlib.sha1(source.encode()).hexdigest())

    def _step_part(self, key: tuple[str, str], source: str) -> tuple[str, str]:
        """Without cell ids, a ``%%step NAME`` cell that is not a recorded part of NAME (same source, or same first
        code line: an edited part) is the step's next part, and says so in one line: code is never dropped."""
        name = key[1]
        parts = [k for k in self._cells if k[0] == "step" and k[1].split("#")[0] == name]
        if not parts:
            return key
        for part in parts:
            if self._cells[part].source == source:
                return part
        first = _first_code_line(source)
        for part in parts:
            if first and _first_code_line(self._cells[part].source) == first:
                print(f"nbmagic: this cell replaces part {_part_number(part)} of step {name!r} (same first line)")
                return part
        new = ("step", f"{name}#{len(parts) + 1}")
        print(
            f"nbmagic: this cell is taken as part {len(parts) + 1} of step {name!r} (a continuation); "
            f"%pipeline --remove {name} starts the step over"
        )
        return new

    def record(self, source: str, cell_id: str | None = None) -> None:
        """Remember a cell as it ran; re-running a cell replaces what it recorded."""
        key = self._key(source, cell_id)
        if key[0] == "step" and not cell_id:
            key = self._step_part(key, source)
        previous = self._cells.get(key)
        self._count += 1
        self._cells[key] = Execution(source, cell_id, previous.first if previous else self._count, time.time())

    def forget_step(self, name: str) -> bool:
        """Drop a recorded step, every part of it, by name (for front ends without cell ids or files)."""
        found = False
        for key, execution in list(self._cells.items()):
            magic = cell_magic(execution.source)
            if magic and magic[0] == STEP_MAGIC and magic[1].split()[:1] == [name]:
                del self._cells[key]
                found = True
        return found

    def reset(self) -> None:
        self._cells.clear()

    def cells(self, notebook_path: Path | None = None) -> list[RawCell]:
        """The notebook's cells in order: the file's order with the kernel's newer sources, or execution order."""
        executions = sorted(self._cells.values(), key=lambda e: e.first)
        if notebook_path is None:
            return [RawCell(e.source, i, f"cell [{i}]", e.cell_id) for i, e in enumerate(executions, start=1)]
        file_cells = read_notebook(notebook_path)
        saved = notebook_path.stat().st_mtime
        by_id = {e.cell_id: e for e in executions if e.cell_id}
        by_step = {
            cell_magic(e.source)[1].split()[0]: e
            for e in executions
            if not e.cell_id
            and cell_magic(e.source)
            and cell_magic(e.source)[0] == STEP_MAGIC
            and cell_magic(e.source)[1].split()
        }
        by_source = {e.source: e for e in executions if not e.cell_id}
        merged: list[RawCell] = []
        used: set[int] = set()
        for cell in file_cells:
            execution = by_id.get(cell.cell_id) if cell.cell_id else None
            if execution is None:
                execution = by_source.get(cell.source)
            if execution is None:
                magic = cell_magic(cell.source)
                if magic and magic[0] == STEP_MAGIC and magic[1].split():
                    execution = by_step.get(magic[1].split()[0])
            if execution is not None:
                used.add(id(execution))
                merged.append(RawCell(execution.source, cell.index, cell.label, cell.cell_id))
            else:
                merged.append(cell)
        last = file_cells[-1].index if file_cells else 0
        for execution in executions:
            # run after the last save and not in the file: a new, unsaved cell. Run before the save and
            # missing from the file: the cell was deleted, so it must not leave a stale step behind.
            if id(execution) in used or execution.when <= saved:
                continue
            last += 1
            merged.append(RawCell(execution.source, last, f"unsaved cell [{last}]", execution.cell_id))
        return merged

    def notebook(self, notebook_path: Path | None = None) -> Notebook:
        notebook = read_cells(self.cells(notebook_path))
        self.defaults = notebook.defaults  # the latest %pipeline_config, for callers that ask the recorder
        return notebook
