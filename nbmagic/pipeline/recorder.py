"""What the live kernel has run, cell by cell, merged with the notebook file when there is one."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .cells import (
    CONFIG_MAGIC,
    METRICS_MAGIC,
    PARAMETERS_MAGIC,
    STEP_MAGIC,
    Notebook,
    RawCell,
    cell_magic,
    read_cells,
    step_name,
)
from .notebook import read_notebook
from .settings import StepSettings


@dataclass
class RecordedCell:
    """A cell as the kernel last ran it (not a step execution: those are ``store.lineage.Execution``)."""

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


class Recorder:
    """Cells executed in this kernel; the source of truth when no notebook file is known."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, str], RecordedCell] = {}
        self._count = 0
        self.notebook_path: Path | None = None
        self.defaults = StepSettings()

    @staticmethod
    def _key(source: str, cell_id: str | None) -> tuple[str, str]:
        if cell_id:
            return ("id", cell_id)
        magic = cell_magic(source)
        if magic and magic[0] == STEP_MAGIC:
            return ("step", step_name(source) or "")
        if magic and magic[0] == PARAMETERS_MAGIC:
            # the names it declares: re-running it with new values replaces it, another parameters cell adds to it
            return ("parameters", ",".join(sorted(_parameter_names(magic[2]))))
        if f"%{METRICS_MAGIC}" in source:
            return ("metrics", "")
        if f"%{CONFIG_MAGIC}" in source:
            return ("config", "")
        return ("code", hashlib.sha1(source.encode()).hexdigest())

    def record(self, source: str, cell_id: str | None = None) -> None:
        """Remember a cell as it ran; re-running a cell replaces what it recorded."""
        key = self._key(source, cell_id)
        previous = self._cells.get(key)
        self._count += 1
        self._cells[key] = RecordedCell(source, cell_id, previous.first if previous else self._count, time.time())

    def forget_step(self, name: str) -> bool:
        """Drop a recorded step by name (for front ends without cell ids or files)."""
        for key, execution in list(self._cells.items()):
            if step_name(execution.source) == name:
                del self._cells[key]
                return True
        return False

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
        by_step = {step_name(e.source): e for e in executions if not e.cell_id and step_name(e.source)}
        by_source = {e.source: e for e in executions if not e.cell_id}
        merged: list[RawCell] = []
        used: set[int] = set()
        for cell in file_cells:
            execution = by_id.get(cell.cell_id) if cell.cell_id else None
            if execution is None:
                execution = by_source.get(cell.source)
            if execution is None:
                name = step_name(cell.source)
                if name:
                    execution = by_step.get(name)
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
