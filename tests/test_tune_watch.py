"""A second kernel watches a local experiment another kernel drives: read-only, with one line when it tries
to stop or drive it; the study file is never written by the watcher (the owner's running trial finishes)."""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.kernel import execute_ok, start_kernel
from nbmagic.tune.local import LocalExperiment
from nbmagic.tune.space import ExperimentSpec, parse_param
from nbmagic.tune.watch import WatchedExperiment, WatchOnly, list_experiments, watch

NAME = "watched-study"


def pipeline(gate: str) -> list[str]:
    """Trials wait for the gate file in the step worker (never in the kernel, where the cell also runs)."""
    return [
        "%load_ext nbmagic",
        "%%pipeline_parameters\nc = 1.0",
        "%%step train\nimport os, sys, time\n"
        f"while 'ipykernel' not in sys.modules and not os.path.exists({gate!r}):\n    time.sleep(0.02)\n"
        "loss = (c - 3.0) ** 2",
        "%pipeline_metrics loss",
    ]


START = f'exp = %katib --param "c=double(0,6)" --algorithm random --seed 0 --max-trials 4 --name {NAME} --quiet'


def text_of(cell) -> str:
    """What a cell showed: streams, text/plain results, and error lines."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.extend(output.traceback)
    return "\n".join(parts)


def errors_of(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


@pytest.mark.slow
def test_a_second_kernel_watches_read_only_and_cannot_stop_or_drive(tmp_path, nbmagic_home):
    gate = tmp_path / "gate"
    manager, driver = start_kernel()
    try:
        for cell in [*pipeline(str(gate)), START]:
            execute_ok(driver, cell)
        owner_pid = int(execute_ok(driver, "import os; print(os.getpid())"))

        watching = [
            "%load_ext nbmagic",
            f"exp = %katib --watch {NAME}\nprint(exp.status, '|', exp.driver, '|', len(exp.trials))",
            "%katib --list",
            "exp.stop()",
            *pipeline(str(gate))[1:],
            START,  # driving it from here too
            "exp.wait(120)\nprint(exp.status, [t.status for t in exp.trials], exp.best.trial, exp.best.objective)",
        ]
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in watching])
        client = NotebookClient(notebook, timeout=180, kernel_name="python3", allow_errors=True)
        with client.setup_kernel():
            cells = notebook.cells
            for index in range(8):
                client.execute_cell(cells[index], index)
            views = [o for o in cells[1].outputs if o.output_type == "display_data"]  # the live view
            assert views and NAME in views[0].data["text/html"] and NAME in views[0].data["text/plain"]
            printed = "".join(o.text for o in cells[1].outputs if o.output_type == "stream")
            status, who, _ = (part.strip() for part in printed.split("|"))
            assert status == "running" and who.startswith("kernel ") and f"PID {owner_pid} " in who
            listing = text_of(cells[2])
            assert NAME in listing and f"PID {owner_pid} " in listing
            assert "<table>" in cells[2].outputs[0].data["text/html"]
            (stop,) = errors_of(cells[3])  # one line, naming the owner
            assert stop.ename == "WatchOnly" and len(stop.traceback) == 1
            assert f"PID {owner_pid} " in stop.evalue and "only watched here" in stop.evalue
            refused = text_of(cells[7])
            assert f"PID {owner_pid} " in refused and f"%katib --watch {NAME}" in refused
            assert len([line for line in refused.splitlines() if line.strip()]) == 1
            gate.touch()  # the owner's trials may end now
            client.execute_cell(cells[8], 8)
        watched = "".join(o.text for o in cells[8].outputs if o.output_type == "stream").strip()  # one print
        owner = execute_ok(
            driver,
            "exp.wait(120)\nprint(exp.status, [t.status for t in exp.trials], exp.best.trial, exp.best.objective)",
        )
        # the watcher saw what the owner did; the owner's trials were neither stopped nor marked interrupted
        assert watched.startswith("succeeded ") and watched == owner.strip()
        assert owner.split()[1:5] == ["['succeeded',", "'succeeded',", "'succeeded',", "'succeeded']"]
    finally:
        gate.touch()
        driver.stop_channels()
        manager.shutdown_kernel(now=True)


def test_watching_in_the_owning_process_returns_the_experiment_itself(tmp_path):
    from nbmagic.tune.experiment import TrialResult

    release = tmp_path / "go"

    def run(values):
        while not release.exists():
            time.sleep(0.01)
        return TrialResult(run_id=None, status="done", metrics={"loss": (values["c"] - 3) ** 2})

    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="own", max_trials=3, algorithm="random", seed=1)
    exp = LocalExperiment(spec, run, pipeline="p").start()
    try:
        assert watch("own") is exp
        other = WatchedExperiment("own", interval=0.05)  # as another process would see it
        assert other.status == "running" and f"PID {os.getpid()} " in other.driver
        with pytest.raises(WatchOnly):
            other.stop()
        assert [r.name for r in list_experiments().rows] == ["own"]
    finally:
        release.touch()
    exp.wait(30)
    other.wait(30)
    assert other.status == "succeeded" and other.driver == "nobody"
    assert [(t.number, t.objective) for t in other.trials] == [(t.number, t.objective) for t in exp.trials]
    assert other.best == exp.best
    with pytest.raises(Exception, match="no local experiment 'nope'"):
        WatchedExperiment("nope")


def test_watch_and_list_misuse_is_one_line(ip):
    from helpers.shell import run_cell

    for line, expected in (
        ("%katib --watch nope", "no local experiment 'nope'"),
        ("%katib --list --watch nope", "take no search space"),
        ('%katib --watch nope --param "c=double(0,1)"', "take no search space"),
        ("%katib --watch nope --max-trials 20", "tuning options: --max-trials given"),
        ("%katib --watch nope --algorithm tpe --seed 3 --quiet", "tuning options: --algorithm, --seed given"),
        ("%katib --list --max-t 5", "tuning options: --max-trials given"),
    ):
        result = run_cell(ip, line)
        error = result.error_in_exec
        assert type(error).__name__ == "UsageError" and expected in str(error) and "\n" not in str(error)
    listing = run_cell(ip, "%katib --list").result
    assert listing.text() == "no local experiments in the store" and "no local experiments" in listing._repr_html_()


def test_a_trial_the_owner_stopped_is_listed_as_stopped_by_the_watcher(tmp_path):
    import threading

    from nbmagic.tune.experiment import TrialResult

    go = threading.Event()

    def run(values):
        go.wait(10)
        return TrialResult(run_id=None, status="stopped", error="stopped with the experiment")

    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="halted", max_trials=3, algorithm="random")
    exp = LocalExperiment(spec, run, pipeline="p").start()
    other = WatchedExperiment("halted", interval=0.05)
    exp.stop()
    go.set()
    exp.wait(10)
    other.wait(10)
    assert (
        [(t.number, t.status) for t in other.trials] == [(t.number, t.status) for t in exp.trials] == [(0, "stopped")]
    )
    assert other.status == exp.status == "stopped"
    # a new owner resumes it: the stopped trial is asked again, and the watcher of that owner no longer lists it
    go.clear()
    again = LocalExperiment(spec, lambda values: TrialResult(None, "done", metrics={"loss": 1.0}), pipeline="p").start()
    again.wait(10)
    assert (
        [t.status for t in WatchedExperiment("halted").trials] == ["succeeded"] * 3 == [t.status for t in again.trials]
    )


def test_a_restarted_study_is_read_afresh_and_an_unreadable_one_ends_the_watch(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from nbmagic.tune.ownership import StudyLock
    from nbmagic.tune.watch import SPEC_ATTR, spec_record

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = tmp_path / "restarted.journal"
    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="restarted", max_trials=30)

    def study(trials: int) -> None:  # what the owner writes, here without running pipelines
        made = optuna.create_study(study_name="restarted", storage=JournalStorage(JournalFileBackend(str(path))))
        made.set_user_attr(SPEC_ATTR, spec_record(spec))
        made.optimize(lambda t: t.suggest_float("c", 0, 6), n_trials=trials)

    lock = StudyLock(tmp_path / "restarted", "restarted").acquire()  # this process drives it
    try:
        study(3)
        watched = WatchedExperiment("restarted", directory=tmp_path, interval=0.02)
        assert watched.status == "running" and len(watched.trials) == 3
        path.unlink()  # the owner ran --restart: a new, longer study in a new file
        study(5)
        deadline = time.time() + 10
        while len(watched.trials) != 5 and time.time() < deadline:
            time.sleep(0.02)
        assert len(watched.trials) == 5 and not watched.done
        path.unlink()
        path.write_text("not a study\n")
        assert watched.wait(30).done
        assert watched.status == "stopped" and "\n" not in watched.message
        assert watched.message.startswith(f"watch ended: {path} could not be read")
    finally:
        lock.release()


def test_the_watcher_never_writes_the_study_file(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from nbmagic.tune.watch import SPEC_ATTR, spec_record

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = tmp_path / "untouched.journal"
    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="untouched", max_trials=3)
    study = optuna.create_study(study_name="untouched", storage=JournalStorage(JournalFileBackend(str(path))))
    study.set_user_attr(SPEC_ATTR, spec_record(spec))
    study.optimize(lambda t: t.suggest_float("c", 0, 6), n_trials=1)
    study.ask()  # a trial an owner that died left running: an owner would mark it, a watcher must not
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    time.sleep(0.02)  # a write now would change the modification time
    watched = WatchedExperiment("untouched", directory=tmp_path, interval=0.01)
    watched.refresh()
    assert watched.done and [t.number for t in watched.trials] == [0, 1]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["untouched.journal"]  # no lock or owner file either
