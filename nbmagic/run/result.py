"""A pipeline run as the user sees it: status per step, metrics, logs, and values on demand."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

FINAL = ("done", "cached", "failed", "skipped", "timed_out", "pruned", "stopped")


@dataclass
class StepState:
    name: str
    status: str = "pending"  # pending | running | cached | done | failed | timed_out | skipped | pruned | stopped
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0
    cache_key: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_kept: dict[str, str] = field(default_factory=dict)

    @property
    def cached(self) -> bool:
        return self.status == "cached"

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started


class Run:
    """A local run: ``run.status``, ``run.steps``, ``run.metrics``, ``run.logs(step)``, ``run.value(name)``."""

    def __init__(self, run_id: str, pipeline: str, steps: list[str], parameters: dict[str, Any], store: Any) -> None:
        self.id = run_id
        self.pipeline = pipeline
        self.parameters = parameters
        self.steps: dict[str, StepState] = {name: StepState(name) for name in steps}
        self.metrics: dict[str, float] = {}
        self.status = "running"
        self.error: str | None = None
        self.started = time.time()
        self.ended: float | None = None
        self._store = store

    @property
    def duration(self) -> float:
        return (self.ended or time.time()) - self.started

    @property
    def cached_steps(self) -> int:
        return sum(1 for s in self.steps.values() if s.cached)

    def logs(self, step: str) -> str:
        """What the step printed (stdout and stderr) in this run."""
        self._check_step(step)
        path = self._store.root / "runs" / self.id / f"{step}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self, step: str) -> dict[str, dict[str, Any]]:
        """name -> stored value reference (hash, type, format, size) for what ``step`` assigned."""
        return dict(self._check_step(step).outputs)

    def value(self, name: str, step: str | None = None) -> Any:
        """Load a value this run produced (from ``step``, else from the last step that assigned it)."""
        candidates = [self._check_step(step)] if step else list(reversed(list(self.steps.values())))
        for state in candidates:
            if name in state.outputs:
                return self._store.objects.get(state.outputs[name]["hash"], name=name)
        from ..errors import NbMagicError

        raise NbMagicError(f"run {self.id}: no stored value {name!r}" + (f" from step {step!r}" if step else ""))

    def wait(self, timeout: float | None = None) -> Run:
        return self  # local runs return when finished

    def _check_step(self, step: str) -> StepState:
        if step not in self.steps:
            from ..errors import NbMagicError

            raise NbMagicError(f"run {self.id} has no step {step!r} (steps: {', '.join(self.steps)})")
        return self.steps[step]

    # -- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        return f"<Run {self.id} {self.pipeline} {self.status} {self.duration:.2f}s cached={self.cached_steps}/{len(self.steps)} {metrics}>"

    def _repr_html_(self) -> str:
        return progress_html(self)


_COLORS = {
    "pending": "#9e9e9e",
    "running": "#1e88e5",
    "cached": "#8e24aa",
    "done": "#43a047",
    "failed": "#e53935",
    "timed_out": "#e53935",
    "skipped": "#bdbdbd",
    "pruned": "#fb8c00",
    "stopped": "#fb8c00",
}


def progress_html(run: Run) -> str:
    """A table of step states, times and metrics; used live while the run goes and as the Run's display."""
    from ..theme import CELL, ERROR

    rows = []
    for state in run.steps.values():
        duration = f"{state.duration:.2f} s" if state.duration is not None else ""
        color = _COLORS.get(state.status, "inherit")
        error = f"<div style='color:{ERROR}'>{html.escape(state.error or '')}</div>" if state.error else ""
        rows.append(
            f"<tr><td style='{CELL}'>{html.escape(state.name)}</td>"
            f"<td style='{CELL};color:{color};font-weight:bold'>{state.status}</td>"
            f"<td style='{CELL};text-align:right'>{duration}</td><td style='{CELL}'>{error}</td></tr>"
        )
    metrics = ", ".join(f"{html.escape(k)} = {v:.4g}" for k, v in run.metrics.items())
    head = (
        f"<b>run {html.escape(run.id)}</b> · {html.escape(run.pipeline)} · "
        f"<span style='color:{_COLORS.get(run.status, 'inherit')}'>{run.status}</span> · {run.duration:.2f} s"
        + (f" · {metrics}" if metrics else "")
    )
    return (
        f"<div>{head}<table><thead><tr><th style='{CELL}'>step</th><th style='{CELL}'>status</th>"
        f"<th style='{CELL}'>time</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def progress_text(run: Run) -> str:
    """The same as text: a line per step, as a terminal shows them (for text-only front ends and exports)."""
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in run.metrics.items())
    lines = [f"run {run.id} {run.pipeline}: {run.status} in {run.duration:.2f} s" + (f"; {metrics}" if metrics else "")]
    for state in run.steps.values():
        took = f" ({state.duration:.2f} s)" if state.duration is not None and state.status != "pending" else ""
        error = f": {(state.error or '').strip().splitlines()[-1]}" if state.error and state.error.strip() else ""
        lines.append(f"  {state.name}: {state.status}{took}{error}")
    return "\n".join(lines)
