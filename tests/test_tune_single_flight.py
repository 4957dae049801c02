"""Single-flight: a step already running with the same cache key (another run, thread or process on the same
store) is waited for and its result taken; a failed leader fails its waiters with its error; a killed leader
lets a waiter run the step itself. Executions are counted by the steps themselves (a line per execution)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def counted_pipeline(counter, load_seconds: float = 1.0, fail: bool = False):
    """load (counted, slow, maybe failing) -> train (reads the parameter ``c``)."""
    return plan_of(
        "%%pipeline_parameters\nc = 1\n",
        "%%step load\nimport time\n"
        f"open({str(counter)!r}, 'a').write('load\\n')\n"
        f"time.sleep({load_seconds})\n" + ("raise ValueError('no data today')\n" if fail else "") + "data = 10\n",
        "%%step train\nscore = data * c\n",
        "%pipeline_metrics score\n",
    )


def executions(counter) -> int:
    return counter.read_text().count("load\n") if counter.exists() else 0


def run_in_threads(runner, plan, parameter_sets):
    runs = [None] * len(parameter_sets)

    def go(i):
        runs[i] = runner.run(plan, parameter_sets[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(parameter_sets))]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a waiter hangs"
    return runs


@pytest.mark.slow
def test_concurrent_runs_execute_a_shared_step_once(tmp_path):
    counter = tmp_path / "count.txt"
    plan = counted_pipeline(counter)
    runs = run_in_threads(LocalRunner(workers=2), plan, [{"c": 1}, {"c": 2}, {"c": 3}])
    assert [r.status for r in runs] == ["done"] * 3
    assert executions(counter) == 1
    assert sorted(r.steps["load"].status for r in runs) == ["cached", "cached", "done"]
    assert sorted(r.metrics["score"] for r in runs) == [10, 20, 30]


@pytest.mark.slow
def test_without_single_flight_each_concurrent_run_executes_it(tmp_path):
    counter = tmp_path / "count.txt"
    plan = counted_pipeline(counter)
    runs = run_in_threads(LocalRunner(workers=2, single_flight=False), plan, [{"c": 1}, {"c": 2}])
    assert [r.status for r in runs] == ["done"] * 2 and executions(counter) == 2


@pytest.mark.slow
def test_a_failed_leader_fails_its_waiters_with_its_error(tmp_path):
    counter = tmp_path / "count.txt"
    plan = counted_pipeline(counter, fail=True)
    runs = run_in_threads(LocalRunner(workers=2), plan, [{"c": 1}, {"c": 2}])
    assert [r.status for r in runs] == ["failed", "failed"]
    assert executions(counter) == 1
    leader, waiter = sorted(runs, key=lambda r: r.steps["load"].attempts, reverse=True)
    assert "no data today" in leader.steps["load"].error
    assert "no data today" in waiter.steps["load"].error and leader.id in waiter.steps["load"].error
    assert waiter.steps["train"].status == "skipped"


CHILD = """
import sys
sys.path[:0] = {paths!r}
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner
sources = {sources!r}
plan = build_plan(read_cells([RawCell(s, i, f"cell {{i}}") for i, s in enumerate(sources, start=1)]))
run = LocalRunner(workers=2).run(plan, {{"c": 5}})
print(run.status, run.steps["load"].status, run.metrics.get("score"), flush=True)
"""


def child_process(plan_sources, nbmagic_home):
    script = CHILD.format(paths=[p for p in sys.path if p], sources=list(plan_sources))
    env = dict(os.environ, NBMAGIC_HOME=str(nbmagic_home))
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for_executions(counter, n, timeout=30):
    deadline = time.time() + timeout
    while executions(counter) < n:
        assert time.time() < deadline, "the step never started"
        time.sleep(0.05)


CELLS = (
    "%%pipeline_parameters\nc = 1\n",
    "%%step load\nimport time\nopen({counter!r}, 'a').write('load\\n')\ntime.sleep({seconds})\ndata = 10\n",
    "%%step train\nscore = data * c\n",
    "%pipeline_metrics score\n",
)


def cells(counter, seconds):
    return [c.format(counter=str(counter), seconds=seconds) for c in CELLS]


def started_leader(tmp_path, nbmagic_home, seconds):
    """A child process running CELLS (``load`` taking ``seconds``), once its ``load`` began: counter, cells, child."""
    counter = tmp_path / "count.txt"
    text = cells(counter, seconds)
    child = child_process(text, nbmagic_home)
    wait_for_executions(counter, 1)
    return counter, text, child


@pytest.mark.slow
def test_another_process_on_the_same_store_waits_for_the_leader(tmp_path, nbmagic_home):
    counter, text, child = started_leader(tmp_path, nbmagic_home, 2.0)
    run = LocalRunner(workers=2).run(plan_of(*text), {"c": 3})
    out, _ = child.communicate(timeout=60)
    assert out.split() == ["done", "done", "50.0"]
    assert run.status == "done" and run.steps["load"].status == "cached" and run.metrics["score"] == 30
    assert executions(counter) == 1


@pytest.mark.slow
def test_a_killed_leader_process_lets_a_waiter_run_the_step(tmp_path, nbmagic_home):
    counter, text, child = started_leader(tmp_path, nbmagic_home, 3.0)
    waiter = threading.Thread(target=lambda: found.append(LocalRunner(workers=2).run(plan_of(*text), {"c": 3})))
    found: list = []
    waiter.start()
    time.sleep(0.5)
    os.killpg(child.pid, signal.SIGKILL)  # the leader's process dies mid-step; the OS drops its lock
    child.wait(10)
    waiter.join(60)
    assert not waiter.is_alive(), "the waiter hangs after its leader died"
    run = found[0]
    assert run.status == "done" and run.steps["load"].status == "done" and run.metrics["score"] == 30
    assert executions(counter) == 2
