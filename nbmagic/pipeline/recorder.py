"""What the live kernel has run, cell by cell, merged with the notebook file when there is one."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
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
    """A cell as the kernel last ran it (not a step execution: those are ``store.lineage.RecordedCell``)."""

    source: str
    cell_id: str | None
    first: int  # first-execution order
    when: float  # time of the latest execution
    after: tuple[str, str] | None = None  # the cell that ran just before this one first ran
    history: tuple[str, ...] = ()  # this cell's earlier sources, newest last


def _kind(source: str) -> str:
    magic = cell_magic(source)
    return magic[0] if magic and magic[0] in (STEP_MAGIC, PARAMETERS_MAGIC) else "code"


def _step_name(source: str) -> str | None:
    return step_name(source) or None


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
        self._cells: dict[tuple[str, str], RecordedCell] = {}
        self._count = 0
        self._last: tuple[str, str] | None = None
        self.notes: list[str] = []  # placements the kernel could only guess, from the latest cells()
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
        if previous is None:
            self._cells[key] = RecordedCell(source, cell_id, self._count, time.time(), self._last)
        else:
            history = previous.history
            if previous.source != source:
                history = (*[h for h in history if h != previous.source], previous.source)[-20:]
            self._cells[key] = RecordedCell(source, cell_id, previous.first, time.time(), previous.after, history)
        self._last = key

    def cell_ids(self) -> list[str]:
        """The cell ids the front end sent, in first-execution order."""
        return [e.cell_id for e in sorted(self._cells.values(), key=lambda e: e.first) if e.cell_id]

    def forget_step(self, name: str) -> bool:
        """Drop a recorded step, every part of it, by name (for front ends without cell ids or files)."""
        found = False
        for key, execution in list(self._cells.items()):
            if _step_name(execution.source) == name:
                del self._cells[key]
                found = True
        return found

    def reset(self) -> None:
        self._cells.clear()
        self._last = None

    def cells(self, notebook_path: Path | None = None) -> list[RawCell]:
        """The notebook's cells in order: the file's order with the kernel's newer sources, or execution order."""
        executions = sorted(self._cells.values(), key=lambda e: e.first)
        self.notes = []
        if notebook_path is None:
            return [RawCell(e.source, i, f"cell [{i}]", e.cell_id) for i, e in enumerate(executions, start=1)]
        file_cells = read_notebook(notebook_path)
        matched = match_executions(file_cells, executions)
        saved = notebook_path.stat().st_mtime
        by_key = {id(e): key for key, e in self._cells.items()}
        position = {by_key[id(e)]: pos for pos, e in matched.items()}
        # (file position, rank) -> cell; unsaved cells go right after the cell that ran before them
        placed: list[tuple[int, int, RawCell]] = []
        for pos, cell in enumerate(file_cells):
            execution = matched.get(pos)
            source = execution.source if execution is not None else cell.source
            placed.append((pos, 0, RawCell(source, cell.index, cell.label, cell.cell_id)))
        used = {id(e) for e in matched.values()}
        extra = 0
        for execution in executions:
            # run after the last save and not in the file: a new, unsaved cell. Run before the save and
            # missing from the file: the cell was deleted, so it must not leave a stale step behind.
            if id(execution) in used or execution.when <= saved:
                continue
            extra += 1
            anchor = position.get(execution.after) if execution.after else None
            where = anchor if anchor is not None else len(file_cells)
            placed.append((where, extra, RawCell(execution.source, 0, "unsaved cell", execution.cell_id)))
            position[by_key[id(execution)]] = where
        placed.sort(key=lambda item: (item[0], item[1]))
        merged: list[RawCell] = []
        previous = "the top"
        for number, (_, rank, cell) in enumerate(placed, start=1):
            label = f"unsaved cell [{number}]" if rank else cell.label
            merged.append(RawCell(cell.source, number, label, cell.cell_id))
            if rank and _kind(cell.source) != "code":
                what = f"step {_step_name(cell.source)}" if _step_name(cell.source) else "parameters"
                self.notes.append(
                    f"nbmagic: {label} ({what}) is not saved yet; it is placed after {previous}, the cell that ran "
                    "before it — save the notebook to use the order on screen"
                )
            previous = label
        return merged

    def notebook(self, notebook_path: Path | None = None) -> Notebook:
        notebook = read_cells(self.cells(notebook_path))
        self.defaults = notebook.defaults  # the latest %pipeline_config, for callers that ask the recorder
        return notebook


def match_executions(file_cells: list[RawCell], executions: list[RecordedCell]) -> dict[int, RecordedCell]:
    """Which execution (if any) is each file cell's, keyed by the cell's position in ``file_cells``.

    In turn: the nbformat cell id (JupyterLab, Notebook 7); then, for executions whose id the file does not
    know (VS Code sends ``vscode-notebook-cell:`` URIs, nbclient and terminals send none), the same source,
    a source the cell had earlier in this kernel (edited and re-run, not saved), the same step name, and last
    the position: the one unmatched execution between two matched neighbours takes the one unmatched file
    cell of its kind between them.
    """
    matched: dict[int, RecordedCell] = {}
    known = {c.cell_id for c in file_cells if c.cell_id}
    by_id = {e.cell_id: e for e in executions if e.cell_id in known}
    for pos, cell in enumerate(file_cells):
        if cell.cell_id and cell.cell_id in by_id:
            matched[pos] = by_id[cell.cell_id]
    rest = [e for e in executions if e.cell_id not in known]

    def claim(test: Callable[[RecordedCell, RawCell], bool]) -> None:
        for execution in list(rest):
            for pos, cell in enumerate(file_cells):
                if pos not in matched and test(execution, cell):
                    matched[pos] = execution
                    rest.remove(execution)
                    break

    claim(lambda e, c: e.source == c.source)
    claim(lambda e, c: c.source in e.history)
    claim(lambda e, c: _step_name(e.source) is not None and _step_name(e.source) == _step_name(c.source))
    # first-execution order approximates screen order (Run All runs top to bottom)
    file_pos = {id(e): pos for pos, e in matched.items()}

    def neighbours(execution: RecordedCell) -> tuple[int, int]:
        i = executions.index(execution)
        before = next((file_pos[id(e)] for e in reversed(executions[:i]) if id(e) in file_pos), -1)
        after = next((file_pos[id(e)] for e in executions[i + 1 :] if id(e) in file_pos), len(file_cells))
        return before, after

    for execution in list(rest):
        before, after = neighbours(execution)
        free = [p for p in range(before + 1, after) if p not in matched]
        alone = [e for e in rest if neighbours(e) == (before, after)] == [execution]
        if before < after and len(free) == 1 and alone and _kind(file_cells[free[0]].source) == _kind(execution.source):
            matched[free[0]] = execution
            file_pos[id(execution)] = free[0]
            rest.remove(execution)
    return matched
