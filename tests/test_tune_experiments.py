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


from helpers.shell import run_cell  # noqa: E402

CELLS = [
    "%%pipeline_parameters\nlr = 0.01",
    "%%step load\ndata = list(range(5))",
    "%%step train\nval_loss = (lr - 0.03) ** 2 + len(data) * 0",
    "%pipeline_metrics val_loss",
]


def test_rerunning_katib_after_a_step_changed_starts_a_new_study_instead_of_resuming_old_results(ip):
    for cell in CELLS:
        assert run_cell(ip, cell).success
    line = '%katib --max-trials 2 --param "lr=double(1e-3,1e-1)" --seed 1 --quiet'
    run_cell(ip, f"first = {line}")
    first = ip.user_ns["first"].wait(120)
    assert first.status == "succeeded" and len(first.trials) == 2
    run_cell(ip, f"same = {line}")
    assert ip.user_ns["same"].wait(60).resumed == 2  # unchanged code: resumes
    # the data scientist fixes the training step and tunes again: the old trials measured other code
    assert run_cell(ip, "%%step train\nval_loss = (lr - 0.05) ** 2 + len(data) * 0").success
    run_cell(ip, f"second = {line}")
    second = ip.user_ns["second"].wait(120)
    assert second.name != first.name and second.resumed == 0 and len(second.trials) == 2
    assert all(abs(t.objective - (t.parameters["lr"] - 0.05) ** 2) < 1e-12 for t in second.trials)
    # under an explicit --name, the changed step is named instead of mixing results of two versions of it
    assert run_cell(ip, "%%step train\nval_loss = (lr - 0.03) ** 2 + len(data) * 0").success
    run_cell(ip, f"named = {line} --name mine")
    ip.user_ns["named"].wait(120)
    assert run_cell(ip, "%%step train\nval_loss = (lr - 0.07) ** 2 + len(data) * 0").success
    result = run_cell(ip, f"{line} --name mine")
    assert not result.success
    assert "experiment 'mine' ran other code of step 'train'" in str(result.error_in_exec)
    assert run_cell(ip, f"fresh = {line} --name mine --restart").success
    assert ip.user_ns["fresh"].wait(120).resumed == 0


def test_cmaes_with_a_categorical_parameter_says_so_once_instead_of_a_warning_per_trial(tmp_path, caplog):
    import logging

    import optuna

    recorded = {"lr": Parameter("lr", 0.01, "float"), "kind": Parameter("kind", "mlp", "str")}
    cma = ExperimentSpec(
        parameters=(parse_param("lr=double(1e-3,1e-1)"), parse_param("kind=categorical(mlp,gbm)")),
        objective="loss",
        algorithm="cmaes",
        max_trials=4,
        seed=1,
    ).check_against(recorded, ["loss"])
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="optuna"):
            exp = run_local(
                cma,
                lambda v: TrialResult("r", "done", metrics={"loss": v["lr"]}),
                recorded=recorded,
                directory=tmp_path,
            ).wait(60)
    finally:
        optuna.logging.disable_propagation()
    assert exp.status == "succeeded" and len(exp.trials) == 4
    assert not [r for r in caplog.records if "sampled independently" in r.getMessage()]
    assert "cmaes" in exp.note and "'kind'" in exp.note and "random" in exp.note


def test_katib_stop_counts_the_trials_that_exist_now_not_the_last_poll(tmp_path):
    """Lowering maxTrialCount below the trials Katib already made would have it delete running ones."""
    from helpers.fake_katib_api import FakeKubernetesAPI
    from helpers.katib_runs import start_katib

    with FakeKubernetesAPI() as api:
        exp = start_katib(api, spec(max_trials=50, parallel_trials=2), RECORDED, "z", poll=5.0)
        deadline = time.time() + 5
        while not exp.trials and time.time() < deadline:
            time.sleep(0.01)
        seen = len(exp.trials)
        for _ in range(2):  # Katib moves on between two polls of the watcher
            api.state.advance(("ns", exp.name))
        made = len(api.state.trials[("ns", exp.name)])
        assert made > seen
        exp.stop()
        assert api.state.experiments[("ns", exp.name)]["spec"]["maxTrialCount"] >= made
