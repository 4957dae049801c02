"""Per-kernel state: the recorder fed by IPython's cell hooks, and the plan built from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from ..pipeline.cells import PARAMETERS_MAGIC, STEP_MAGIC, cell_magic
from ..pipeline.model import PipelinePlan
from ..pipeline.notebook import find_notebook
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
        return self.notebook_override or find_notebook(self.shell.user_ns)

    def plan(self, notebook: str | None = None, name: str | None = None) -> PipelinePlan:
        path = self.notebook_path(notebook)
        recorded = self.recorder.notebook(path)
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
