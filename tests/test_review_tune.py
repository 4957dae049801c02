"""Review findings for tuning: each test failed before its fix."""
from __future__ import annotations

import threading
import time

import pytest

from nbmagic.pipeline.model import Parameter
from nbmagic.tune.experiment import TrialResult
from nbmagic.tune.local import run_local
from nbmagic.tune.space import ExperimentSpec, TuneError, parse_param

RECORDED = {"lr": Parameter("lr", 0.01, "float")}


def spec(**kw):
    kw.setdefault("parameters", (parse_param("lr=double(1e-3,1e-1)"),))
    kw.setdefault("objective", "loss")
    kw.setdefault("seed", 1)
    return ExperimentSpec(**kw).check_against(RECORDED, ["loss"])


def test_starting_an_experiment_that_is_still_running_is_refused_and_the_first_keeps_its_trials(tmp_path):
    gate = threading.Event()

    def waiting(values):
        gate.wait(10)
        return TrialResult("r", "done", metrics={"loss": values["lr"]})

    first = run_local(spec(max_trials=3), waiting, recorded=RECORDED, directory=tmp_path)
    time.sleep(0.2)
    with pytest.raises(TuneError, match=f"experiment '{first.name}' is still running in this kernel"):
        run_local(spec(max_trials=3), waiting, recorded=RECORDED, directory=tmp_path)
    with pytest.raises(TuneError, match="still running"):
        run_local(spec(max_trials=3), waiting, recorded=RECORDED, directory=tmp_path, restart=True)
    gate.set()
    first.wait(30)
    assert first.status == "succeeded" and [t.status for t in first.trials] == ["succeeded"] * 3
    again = run_local(spec(max_trials=4), waiting, recorded=RECORDED, directory=tmp_path).wait(30)
    assert again.resumed == 3 and len(again.trials) == 4
