"""Local tuning with real Optuna and a plain Python trial function."""

from __future__ import annotations

import threading
import time

import pytest

from nbmagic.pipeline.model import Parameter
from nbmagic.tune.experiment import TrialResult
from nbmagic.tune.local import LocalExperiment, make_sampler, run_local
from nbmagic.tune.space import ALGORITHMS, ExperimentSpec, parse_param

RECORDED = {
    "lr": Parameter("lr", 0.01, "float"),
    "epochs": Parameter("epochs", 10, "int"),
    "kind": Parameter("kind", "mlp", "str"),
}


def spec(**kw):
    kw.setdefault("parameters", (parse_param("lr=double(1e-4,1e-1,log)"), parse_param("epochs=int(1,20)")))
    kw.setdefault("objective", "loss")
    kw.setdefault("seed", 3)
    return ExperimentSpec(**kw).check_against(RECORDED, ["loss", "acc"])


def quadratic(calls=None, delay=0.0):
    def run_trial(values):
        if calls is not None:
            calls.append(values)
        time.sleep(delay)
        loss = (values["lr"] - 0.02) ** 2 + values["epochs"] * 1e-4
        return TrialResult(
            run_id=f"run-{len(calls or [])}", status="done", metrics={"loss": loss, "acc": 1 - loss}, cached_steps=2
        )

    return run_trial


def test_trials_get_typed_values_and_best_is_the_minimum(tmp_path):
    calls = []
    exp = run_local(spec(max_trials=6, parallel_trials=2), quadratic(calls), recorded=RECORDED, directory=tmp_path)
    exp.wait(60)
    assert exp.status == "succeeded" and len(exp.trials) == 6
    assert all(type(c["lr"]) is float and type(c["epochs"]) is int and c["kind"] == "mlp" for c in calls)
    best = exp.best
    assert best.objective == min(t.objective for t in exp.trials)
    assert best.metrics["acc"] == pytest.approx(1 - best.objective)
    assert all(t.cached_steps == 2 and t.duration is not None for t in exp.trials)


def test_returns_at_once_and_runs_parallel_trials_in_background(tmp_path):
    gate = threading.Event()
    running = []

    def slow(values):
        running.append(1)
        gate.wait(10)
        return TrialResult(run_id="r", status="done", metrics={"loss": values["lr"]})

    started = time.perf_counter()
    exp = run_local(spec(max_trials=4, parallel_trials=2), slow, recorded=RECORDED, directory=tmp_path)
    assert time.perf_counter() - started < 2 and not exp.done
    deadline = time.time() + 5
    while len(running) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(running) == 2 and [t.status for t in exp.trials] == ["running", "running"]
    gate.set()
    exp.wait(30)
    assert len(exp.trials) == 4 and exp.status == "succeeded"


def test_resume_runs_only_the_missing_trials(tmp_path):
    calls = []
    first = run_local(spec(max_trials=3), quadratic(calls), recorded=RECORDED, directory=tmp_path).wait(30)
    numbers = [t.number for t in first.trials]
    again = run_local(spec(max_trials=5), quadratic(calls), recorded=RECORDED, directory=tmp_path).wait(30)
    assert again.name == first.name and again.resumed == 3
    assert len(calls) == 5 and [t.number for t in again.trials][:3] == numbers
    assert again.trials[0].run_id == first.trials[0].run_id
    fresh = run_local(spec(max_trials=2), quadratic(calls), recorded=RECORDED, directory=tmp_path, restart=True).wait(
        30
    )
    assert fresh.resumed == 0 and len(fresh.trials) == 2


def test_a_changed_space_under_the_same_name_is_refused(tmp_path):
    run_local(spec(max_trials=1, name="exp-a"), quadratic(), recorded=RECORDED, directory=tmp_path).wait(30)
    other = spec(max_trials=1, name="exp-a", parameters=(parse_param("lr=double(0.1,0.2)"),))
    with pytest.raises(Exception, match="experiment 'exp-a' exists with another search space"):
        run_local(other, quadratic(), recorded=RECORDED, directory=tmp_path)


def test_a_trial_that_always_fails_stops_at_max_failed_with_errors(tmp_path):
    def broken(values):
        raise ValueError(f"bad lr {values['lr']:.3g}")

    exp = run_local(spec(max_trials=20, max_failed_trials=3), broken, recorded=RECORDED, directory=tmp_path).wait(30)
    assert exp.status == "failed" and len(exp.trials) == 3
    assert all(t.status == "failed" and t.error.startswith("ValueError: bad lr") for t in exp.trials)
    assert "stopped after 3 failed trials" in exp.message and "ValueError: bad lr" in exp.message
    assert exp.best is None


def test_failed_runs_and_missing_metrics_are_trial_errors(tmp_path):
    outcomes = iter(
        [
            TrialResult("a", "failed", error="step 'train' failed: ZeroDivisionError"),
            TrialResult("b", "done", metrics={"acc": 0.5}),
            TrialResult("c", "done", metrics={"loss": 0.25}),
        ]
    )
    exp = run_local(
        spec(max_trials=3, max_failed_trials=5), lambda v: next(outcomes), recorded=RECORDED, directory=tmp_path
    ).wait(30)
    errors = [t.error for t in exp.trials]
    assert errors[0] == "step 'train' failed: ZeroDivisionError"
    assert errors[1] == "metric 'loss' was not reported by the run (reported: acc)"
    assert exp.best.run_id == "c" and exp.status == "succeeded"


def test_stop_keeps_finished_trials_and_lets_running_ones_end(tmp_path):
    gate = threading.Event()

    def waiting(values):
        gate.wait(10)
        return TrialResult("r", "done", metrics={"loss": 1.0})

    exp = run_local(spec(max_trials=10, parallel_trials=2), waiting, recorded=RECORDED, directory=tmp_path)
    time.sleep(0.2)
    exp.stop()
    gate.set()
    exp.wait(30)
    assert exp.status == "stopped" and len(exp.trials) == 2
    assert all(t.status == "succeeded" for t in exp.trials)
    resumed = (
        LocalExperiment(spec(max_trials=10, parallel_trials=2), waiting, recorded=RECORDED, directory=tmp_path)
        .start()
        .wait(30)
    )
    assert resumed.resumed == 2 and len(resumed.trials) == 10


def test_grid_visits_each_point_once_and_ends_when_exhausted(tmp_path):
    grid = spec(
        algorithm="grid",
        max_trials=50,
        parameters=(parse_param("lr=double(0.01,0.03,step=0.01)"), parse_param("kind=categorical(mlp,gbm)")),
    )
    seen = []

    def record(values):
        seen.append((values["lr"], values["kind"]))
        return TrialResult("r", "done", metrics={"loss": values["lr"]})

    exp = run_local(grid, record, recorded=RECORDED, directory=tmp_path).wait(30)
    assert sorted(seen) == sorted((lr, k) for lr in (0.01, 0.02, 0.03) for k in ("mlp", "gbm"))
    assert exp.status == "succeeded" and exp.best.parameters["lr"] == 0.01


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "grid"])
def test_every_algorithm_has_a_sampler_that_runs(algorithm, tmp_path):
    sampler, note = make_sampler(spec(algorithm=algorithm))
    assert type(sampler).__name__.endswith("Sampler")
    exp = run_local(spec(algorithm=algorithm, max_trials=4), quadratic(), recorded=RECORDED, directory=tmp_path).wait(
        60
    )
    assert exp.status == "succeeded", exp.message
    assert len({t.parameters["lr"] for t in exp.trials}) > 1


def test_kernel_interrupt_while_waiting_stops_the_experiment(tmp_path):
    import os
    import signal

    def slowish(values):
        time.sleep(0.2)
        return TrialResult("r", "done", metrics={"loss": values["lr"]})

    exp = run_local(spec(max_trials=50), slowish, recorded=RECORDED, directory=tmp_path)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        exp.wait(20)
    exp.wait(20)
    assert exp.status == "stopped" and 1 <= len(exp.trials) < 50
    assert all(t.status == "succeeded" for t in exp.trials)  # the running trial ended and was kept


def test_pipeline_trials_run_with_their_imports_already_in_the_worker(ip):
    """Forked steps find nbmagic's step runtime and the submodules the notebook imports already imported
    (the runner preloads full module names, e.g. sklearn.ensemble, not only sklearn): 20-130 ms per step."""
    from helpers.shell import run_cell
    from nbmagic.magics.state import current_plan
    from nbmagic.run.local import preload_modules
    from nbmagic.tune.local import pipeline_trial_runner

    for cell in (
        "import json\nimport numpy",
        "%%pipeline_parameters\nlr = 0.01",
        "%%step load\ndata = numpy.arange(3)",
        "%%step train\nimport sys\nwarm = float('numpy.polynomial' in sys.modules)\n"
        "import numpy.polynomial\nloss = (lr - 0.02) ** 2 + len(data) * 0",
        "%pipeline_metrics loss warm",
    ):
        assert run_cell(ip, cell).success
    plan = current_plan(ip)
    assert preload_modules(plan) == ["numpy", "numpy.polynomial"]  # json is stdlib: nothing to warm
    run_trial = pipeline_trial_runner(plan)
    first, second = run_trial({"lr": 0.03}), run_trial({"lr": 0.05})
    assert first.status == second.status == "done" and second.cached_steps == 1
    assert second.metrics["loss"] == pytest.approx(0.0009)
    assert first.metrics["warm"] == second.metrics["warm"] == 1.0  # imported in the worker before the fork


def test_terminal_view_prints_each_finished_trial_once_and_the_summary(tmp_path):
    from nbmagic.tune.view import TerminalView

    lines: list[str] = []
    exp = LocalExperiment(
        spec(max_trials=4, parallel_trials=2), quadratic(), pipeline="p", recorded=RECORDED, directory=tmp_path
    )
    TerminalView(exp, write=lines.append).attach()
    exp.start().wait(30)
    deadline = time.monotonic() + 10  # the summary follows the end, from the experiment's own thread
    while not (lines and "succeeded" in lines[-1]) and time.monotonic() < deadline:
        time.sleep(0.02)
    trial_lines = [line for line in lines if " trial " in line and "best trial" not in line]
    assert len(trial_lines) == 4 and len(set(trial_lines)) == 4
    assert all("loss=" in line for line in trial_lines)
    assert "4 succeeded, 0 failed" in lines[-1] and "best trial" in lines[-1]


def test_ctrl_c_waits_for_running_trials_only_when_stop_can_end_them(tmp_path):
    import os
    import signal

    release = threading.Event()
    started = threading.Event()

    def plain(values):  # cannot be stopped: takes no stop event
        started.set()
        release.wait(30)
        return TrialResult(run_id="r", status="done", metrics={"loss": values["lr"]})

    def stoppable(values, stop=None):
        return plain(values)

    stoppable.stoppable = True
    assert LocalExperiment(spec(), stoppable, recorded=RECORDED, directory=tmp_path).stop_ends_trials is True
    exp = run_local(spec(max_trials=2, parallel_trials=1), plain, recorded=RECORDED, directory=tmp_path)
    assert exp.stop_ends_trials is False
    assert started.wait(10)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # a real Ctrl-C while exp.wait() blocks
    guard = threading.Timer(20, release.set)  # the test never hangs, whatever happens
    guard.start()
    began = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            exp.wait(30)
        # the running trial cannot be ended: Ctrl-C is not held up waiting for it
        assert time.perf_counter() - began < 10 and not exp.done
    finally:
        release.set()
        guard.cancel()
    exp.wait(30)
    assert exp.status == "stopped" and [t.status for t in exp.trials] == ["succeeded"]


def test_a_study_saved_without_a_spec_still_refuses_another_space(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from nbmagic.tune.local import KEY_ATTR, study_path
    from nbmagic.tune.watch import SPEC_ATTR

    first = spec(max_trials=1, name="exp-b")
    path = study_path("exp-b", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = optuna.create_study(study_name=path.stem, storage=JournalStorage(JournalFileBackend(str(path))))
    old.set_user_attr(KEY_ATTR, first.key("pipeline"))  # as stored before the spec attribute existed
    assert SPEC_ATTR not in old.user_attrs
    other = spec(max_trials=1, name="exp-b", parameters=(parse_param("lr=double(0.1,0.2)"),))
    with pytest.raises(Exception, match="experiment 'exp-b' exists with another search space"):
        run_local(other, quadratic(), recorded=RECORDED, directory=tmp_path)


def test_each_resume_records_its_spec_for_watchers(tmp_path):
    from nbmagic.tune.watch import SPEC_ATTR, spec_from_record

    first = run_local(spec(max_trials=1, name="exp-c"), quadratic(), recorded=RECORDED, directory=tmp_path).wait(30)
    assert spec_from_record(first._study.user_attrs[SPEC_ATTR]).max_trials == 1
    again = run_local(spec(max_trials=2, name="exp-c"), quadratic(), recorded=RECORDED, directory=tmp_path).wait(30)
    assert spec_from_record(again._study.user_attrs[SPEC_ATTR]).max_trials == 2
