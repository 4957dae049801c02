"""Per-kernel state: the recorder fed by IPython's cell hooks, and the plan built from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from ..pipeline.cells import PARAMETERS_MAGIC, STEP_MAGIC, cell_magic
from ..pipeline.model import PipelinePlan
from ..pipeline.notebook import find_notebook, find_through_server, kernel_id, vscode_notebook
from ..pipeline.plan import build_plan
from ..pipeline.recorder import Recorder


class KernelState:
    """What nbmagic keeps for one IPython shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.recorder = Recorder()
        self.current: tuple[str, str | None] | None = None  # (raw cell, cell id) being run
        self.nested = 0  # >0 while a %%step body runs as a nested cell
        self.notebook_override: Path | None = None
        self.last_run: Any = None
        self.notes_shown: set[str] = set()

    # -- IPython hooks -----------------------------------------------------------------
    def pre_run_cell(self, info: Any) -> None:
        if self.nested:
            return
        self.current = (info.raw_cell, getattr(info, "cell_id", None))

    def post_run_cell(self, result: Any) -> None:
        if self.nested or self.current is None:
            return
        source, cell_id = self.current
        self.current = None
        from IPython.core.error import UsageError

        if isinstance(getattr(result, "error_in_exec", None), UsageError):
            return  # a magic refused its arguments: nothing of this cell is recorded
        magic = cell_magic(source)
        if magic and magic[0] in (STEP_MAGIC, PARAMETERS_MAGIC):
            return  # those magics record themselves once their arguments are valid
        if source.strip():
            self.recorder.record(source, cell_id)

    def record_current(self, fallback_source: str) -> None:
        """Record the cell running now (called by %%step / %%pipeline_parameters after validation)."""
        source, cell_id = self.current if self.current else (fallback_source, None)
        if cell_magic(source) is None:
            source = fallback_source  # run via run_cell_magic() rather than a cell
        self.recorder.record(source, cell_id)

    # -- the plan ----------------------------------------------------------------------
    def notebook_path(self, explicit: str | None = None) -> Path | None:
        if explicit:
            self.notebook_override = find_notebook({}, explicit)
        if self.notebook_override:
            return self.notebook_override
        found = find_notebook(self.shell.user_ns)
        if found is None:
            in_editor = vscode_notebook(self.recorder.cell_ids())
            found = in_editor.resolve() if in_editor and in_editor.is_file() else None
        if found is None and self._in_kernel():
            found = find_through_server(kernel_id())
        return found

    def _in_kernel(self) -> bool:
        return self.shell.__class__.__name__ == "ZMQInteractiveShell"

    def order_note(self) -> str | None:
        """One line for a notebook front end whose file the kernel cannot find: steps follow kernel order."""
        ids = self.recorder.cell_ids()
        if not ids:
            return None
        in_editor = vscode_notebook(ids)
        where = (
            f"{in_editor.name} is not on the kernel's machine"
            if in_editor
            else "the kernel cannot find its notebook file"
        )
        return (
            f"nbmagic: {where}, so steps follow the order cells first ran in this kernel; "
            "give --notebook PATH (a copy the kernel can read) to follow the file's order"
        )

    def plan(self, notebook: str | None = None, name: str | None = None) -> PipelinePlan:
        path = self.notebook_path(notebook)
        recorded = self.recorder.notebook(path)
        notes = [self.order_note()] if path is None else self.recorder.notes
        for note in notes:
            if note and note not in self.notes_shown:
                self.notes_shown.add(note)
                print(note, flush=True)
        return build_plan(recorded, notebook_path=str(path) if path else None, name=name)


_STATES: WeakKeyDictionary[Any, KernelState] = WeakKeyDictionary()


def kernel_state(shell: Any) -> KernelState:
    state = _STATES.get(shell)
    if state is None:
        state = _STATES[shell] = KernelState(shell)
    return state


def current_plan(shell: Any, notebook: str | None = None) -> PipelinePlan:
    """The pipeline recorded in ``shell``'s kernel (merged with its notebook file when found)."""
    return kernel_state(shell).plan(notebook)
