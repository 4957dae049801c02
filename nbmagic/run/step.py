"""The step runtime: run one step's cell code on its inputs and hand back what it assigned.

Used by the local runner's worker processes and, embedded as source, by compiled KFP components,
so it imports only the standard library.
"""
from __future__ import annotations

import linecache
import sys
import traceback
from typing import Any, Callable


class StepError(Exception):
    """The cell raised; ``notebook_traceback`` points at notebook cells, not at generated code."""

    def __init__(self, step: str, exc: BaseException, notebook_traceback: str):
        super().__init__(f"step {step!r} failed: {type(exc).__name__}: {exc}")
        self.step = step
        self.exc_type = type(exc).__name__
        self.notebook_traceback = notebook_traceback


def _register(label: str, code: str) -> None:
    """Make ``code`` visible to tracebacks under the file name ``label``."""
    linecache.cache[label] = (len(code), None, code.splitlines(keepends=True), label)


def _notebook_traceback(exc: BaseException, labels: set[str]) -> str:
    """Format ``exc`` keeping only frames from notebook code (the cell and its prelude)."""
    frames = traceback.extract_tb(exc.__traceback__)
    kept = [f for f in frames if f.filename in labels or not f.filename.startswith("<") and "nbmagic" not in f.filename]
    # drop leading runtime frames; keep library frames that the notebook code called into
    while kept and kept[0].filename not in labels:
        kept.pop(0)
    lines = ["Traceback (most recent call last):\n"] + traceback.format_list(kept)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def execute(
    step: str,
    code: str,
    label: str,
    values: dict[str, Any],
    writes: list[str] | tuple[str, ...],
    prelude: str = "",
    prelude_label: str = "<notebook code>",
    setup: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``prelude`` then ``code`` in a fresh namespace seeded with ``values``.

    ``setup`` may prepare the namespace first (e.g. an IPython shell for magics in the cell).
    Returns the names in ``writes`` that the code left bound. Raises StepError if the code raises.
    """
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    labels = {label, prelude_label}
    if setup is not None:
        setup(namespace)
    try:
        if prelude:
            _register(prelude_label, prelude)
            exec(compile(prelude, prelude_label, "exec"), namespace)
        namespace.update(values)
        _register(label, code)
        exec(compile(code, label, "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - the cell's own error, reported with its traceback
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, SystemExit):
            raise
        raise StepError(step, exc, _notebook_traceback(exc, labels)) from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return {name: namespace[name] for name in writes if name in namespace}
