"""What a tuning experiment looks like from the notebook, whichever backend runs it (local Optuna or Katib)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .space import ExperimentSpec

RUNNING, SUCCEEDED, FAILED, STOPPED = "running", "succeeded", "failed", "stopped"
PRUNED = "pruned"  # a trial stopped early by --early-stopping: not a failure


@dataclass
class TrialResult:
    """What a trial runner returns: one pipeline run's outcome."""

    run_id: str | None
    status: str  # "done" | "failed" | "pruned" | "stopped"
    metrics: dict[str, float] = field(default_factory=dict)
    cached_steps: int = 0
    error: str | None = None
    duration: float = 0.0


@dataclass
class Trial:
    """One trial as shown in the table: tuned values, outcome, timing."""

    number: int
    parameters: dict[str, Any]
    status: str = RUNNING  # running | succeeded | failed | pruned | stopped
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    duration: float | None = None
    cached_steps: int = 0
    error: str | None = None
    name: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, objective) from nbmagic.report()


@dataclass(frozen=True)
class Best:
    """The best finished trial so far."""

    trial: int
    parameters: dict[str, Any]
    objective: float
    metrics: dict[str, float]
    run_id: str | None

    @property
    def run(self) -> str | None:
        """The id of the pipeline run that produced the best trial (for ``%restore``)."""
        return self.run_id


def objective_of(metrics: dict[str, Any], name: str) -> tuple[float | None, str | None]:
    """The objective value from a run's metrics, or an error saying why it is unusable."""
    if name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        return None, f"metric {name!r} was not reported by the run (reported: {known})"
    try:
        value = float(metrics[name])
    except (TypeError, ValueError):
        return None, f"metric {name!r} is not a number: {metrics[name]!r}"
    if math.isnan(value) or math.isinf(value):
        return None, f"metric {name!r} is {value}"
    return value, None


class Experiment:
    """Shared surface: ``.trials``, ``.best``, ``.status``, ``.wait()``, ``.stop()``, ``.on_update(fn)``."""

    backend = "?"
    stop_ends_trials = False  # True where stop() ends running trials itself (local), so waiting for it is short

    def __init__(self, name: str, spec: ExperimentSpec) -> None:
        self.name = name
        self.spec = spec
        self.status = RUNNING
        self.message = ""
        self.note = ""
        self.started = time.time()
        self._trials: list[Trial] = []
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._observers: list[Callable[[Experiment], None]] = []

    @property
    def trials(self) -> list[Trial]:
        """A snapshot of the trials, in the order they started."""
        with self._lock:
            return [Trial(**{**vars(t), "curve": list(t.curve)}) for t in self._trials]

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def best(self) -> Best | None:
        finished = [t for t in self.trials if t.status == SUCCEEDED and t.objective is not None]
        if not finished:
            return None
        sign = 1 if self.spec.goal == "minimize" else -1
        top = min(finished, key=lambda t: (sign * t.objective, t.number))
        return Best(top.number, dict(top.parameters), top.objective, dict(top.metrics), top.run_id)

    @property
    def errors(self) -> list[tuple[int, str]]:
        return [(t.number, t.error or "") for t in self.trials if t.status == FAILED]

    def on_update(self, callback: Callable[[Experiment], None]) -> None:
        """Call ``callback(experiment)`` (from a background thread) whenever a trial starts or ends."""
        self._observers.append(callback)

    def _notify(self) -> None:
        for callback in list(self._observers):
            try:
                callback(self)
            except Exception:  # a broken view must not stop the trials
                pass

    def wait(self, timeout: float | None = None) -> Experiment:
        """Block until the experiment ends; a kernel interrupt stops it (running trials end) and re-raises."""
        try:
            self._done.wait(timeout)
        except KeyboardInterrupt:
            self.stop(wait=self.stop_ends_trials)  # local: running trials end before the interrupt goes on
            raise
        return self

    def stop(self, wait: bool = False) -> Experiment:  # pragma: no cover - overridden
        raise NotImplementedError

    def summary(self) -> str:
        counts = {s: sum(t.status == s for t in self.trials) for s in (RUNNING, SUCCEEDED, FAILED, PRUNED, STOPPED)}
        best = self.best
        text = (
            f"{self.backend} experiment {self.name!r} {self.status}: {counts[SUCCEEDED]} succeeded, "
            f"{counts[FAILED]} failed, "
            + (f"{counts[PRUNED]} pruned, " if counts[PRUNED] else "")
            + (f"{counts[STOPPED]} stopped, " if counts[STOPPED] else "")
            + f"{counts[RUNNING]} running of {self.spec.max_trials}"
        )
        if best:
            text += f"; best trial {best.trial} {self.spec.objective}={best.objective:.6g} {best.parameters}"
        if self.message:
            text += f"\n{self.message}"
        return text

    def __repr__(self) -> str:
        return f"<Experiment {self.name} ({self.backend}) {self.status}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())

    def _ipython_display_(self) -> None:
        """A live view in notebooks (not again in the cell that started it), the summary in a terminal."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "execution_count", None) == getattr(self, "_shown_in", -1):
            return
        if shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell":
            from .view import LiveView

            LiveView(self).show()
        else:
            print(self.summary())
