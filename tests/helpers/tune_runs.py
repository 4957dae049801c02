"""A local tuning experiment over lr and kind, run to its end with trial outcomes given in advance."""

from __future__ import annotations

from pathlib import Path

from nbmagic.tune.experiment import TrialResult
from nbmagic.tune.local import run_local
from nbmagic.tune.space import ExperimentSpec, parse_param


def finished_local_experiment(tmp_path: Path, outcomes: list[float | None]):
    """One trial per outcome, in order: a ``loss`` value, or None for a trial whose step failed (a ValueError)."""
    spec = ExperimentSpec(
        parameters=(parse_param("lr=double(1e-3,1e-1,log)"), parse_param("kind=categorical(a,b)")),
        objective="loss",
        max_trials=len(outcomes),
        max_failed_trials=len(outcomes),
    )
    given = iter(outcomes)

    def trial(values):
        value = next(given)
        if value is None:
            return TrialResult("r-fail", "failed", error="step 'train': ValueError: x < 0")
        return TrialResult(f"r-{value}", "done", metrics={"loss": value}, cached_steps=1)

    return run_local(spec, trial, directory=tmp_path).wait(30)
