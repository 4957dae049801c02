"""Run cells in an IPython shell the way a front end does."""

from __future__ import annotations


def run_cell(shell, source: str):
    """Run a cell like a front end does (hooks included); return the ExecutionResult."""
    return shell.run_cell(source, store_history=True)


def run_ok(shell, source: str):
    """Run a cell and return its result; the cell's error, if any, is raised."""
    result = shell.run_cell(source, store_history=True)
    if result.error_in_exec or result.error_before_exec:
        raise result.error_in_exec or result.error_before_exec
    return result.result
