"""The local runner on real worker processes: parallelism, caching, failures, limits, stored values."""

from __future__ import annotations

import os
import time

import pytest

from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


@pytest.fixture
def runner():
    return LocalRunner(workers=2)


def test_independent_steps_run_at_the_same_time(runner):
    plan = plan_of(
        "import time\n",
        "%%step a\na_start = time.time()\ntime.sleep(1)\na_end = time.time()\n",
        "%%step b\nb_start = time.time()\ntime.sleep(1)\nb_end = time.time()\n",
    )
    run = runner.run(plan)
    assert run.status == "done"
    a = run.value("a_start"), run.value("a_end")
    b = run.value("b_start"), run.value("b_end")
    assert a[0] < b[1] and b[0] < a[1], "the two steps' run times do not overlap"


PIPELINE = (
    "%%pipeline_parameters\nscale = 2\noffset = 1\n",
    "%%step load\nimport numpy as np\ndata = np.arange(10.0)\n",
    "%%step features\nfeatures = data * scale\n",
    "%%step shifted\nshift = data + offset\n",
    "%%step total\nresult = float(features.sum() + shift.sum())\n",
    "%pipeline_metrics result\n",
)


def test_cache_reuses_unchanged_steps_and_reruns_what_a_parameter_reaches(runner):
    plan = plan_of(*PIPELINE)
    first = runner.run(plan)
    assert first.status == "done" and first.metrics == {"result": 90.0 + 55.0}
    assert first.cached_steps == 0
    again = runner.run(plan)
    assert {s.name: s.status for s in again.steps.values()} == dict.fromkeys(
        ["load", "features", "shifted", "total"], "cached"
    )
    assert again.metrics == first.metrics
    changed = runner.run(plan, {"offset": "3"})
    assert {s.name: s.status for s in changed.steps.values()} == {
        "load": "cached",
        "features": "cached",
        "shifted": "done",
        "total": "done",
    }
    assert changed.metrics["result"] == 90.0 + 75.0
    uncached = runner.run(plan, cache=False)
    assert uncached.cached_steps == 0


def test_per_step_cache_opt_out(runner):
    plan = plan_of("%%step stamp --no-cache\nimport time\nnow = time.time()\n", "%%step keep\nk = 1\n")
    runner.run(plan)
    second = runner.run(plan)
    assert second.steps["stamp"].status == "done" and second.steps["keep"].status == "cached"


def test_numpy_values_cross_edges_as_npy(runner):
    run = runner.run(plan_of(*PIPELINE))
    assert run.outputs("load")["data"]["format"] == "npy"


def test_failing_step_points_at_the_cell_skips_downstream_keeps_upstream_and_resumes(runner):
    broken = list(PIPELINE)
    broken[2] = "%%step features\nfactor = scale\nfeatures = data.reshape(3, 3) * factor\n"
    run = runner.run(plan_of(*broken))
    assert run.status == "failed"
    features = run.steps["features"]
    assert features.status == "failed"
    assert "ValueError" in features.error and "reshape" in features.error
    assert 'File "cell 3 (step features)", line 3' in features.traceback  # line 1 is the %%step line
    assert "features = data.reshape(3, 3) * factor" in features.traceback
    assert "ephemeral" not in features.traceback and "nbmagic/run" not in features.traceback
    assert run.steps["total"].status == "skipped"
    assert run.steps["load"].status == "done" and run.value("data").shape == (10,)
    fixed = runner.run(plan_of(*PIPELINE))
    assert fixed.steps["load"].status == "cached" and fixed.steps["features"].status == "done"


def test_unserializable_value_a_later_step_reads_names_step_variable_and_type(runner):
    run = runner.run(
        plan_of("%%step make\nimport threading\nlock = threading.Lock()\n", "%%step use\nheld = lock.locked()\n")
    )
    error = run.steps["make"].error
    assert run.status == "failed"
    assert "step 'make'" in error and "'lock'" in error and "lock" in error.lower()


def test_unserializable_value_nobody_reads_is_listed_as_not_kept(runner):
    run = runner.run(plan_of("%%step make\nimport threading\nguard = threading.Lock()\nn = 3\n"))
    assert run.status == "done"
    assert "guard" in run.steps["make"].not_kept and "lock" in run.steps["make"].not_kept["guard"].lower()
    assert run.value("n") == 3


def test_retries_rerun_a_step_that_fails_once(runner, tmp_path):
    marker = tmp_path / "tried"
    plan = plan_of(
        f"%%step flaky --retries 1\nimport os\nif not os.path.exists({str(marker)!r}):\n    open({str(marker)!r}, 'w').close()\n    raise RuntimeError('first try fails')\nok = True\n"
    )
    run = runner.run(plan)
    assert run.status == "done" and run.steps["flaky"].attempts == 2


def test_timeout_stops_the_step_and_its_process(runner, tmp_path):
    pid_file = tmp_path / "pid"
    plan = plan_of(
        f"%%step slow --timeout 1s\nimport os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    started = time.monotonic()
    run = runner.run(plan)
    assert time.monotonic() - started < 30
    assert run.steps["slow"].status == "timed_out"
    assert "timed out after 1 s" in run.steps["slow"].error
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_memory_limit_stops_a_step_with_a_clear_message(runner):
    plan = plan_of("%%step hungry --memory-limit 300Mi\nblob = bytearray(2 * 1024 ** 3)\n")
    run = runner.run(plan)
    assert run.steps["hungry"].status == "failed"
    assert "memory limit 300Mi" in run.steps["hungry"].error


def test_environment_variables_apply_locally(runner):
    run = runner.run(plan_of("%%step env --env MODE=fast\nimport os\nmode = os.environ['MODE']\n"))
    assert run.value("mode") == "fast"


def test_ipython_syntax_runs_inside_a_step(runner):
    run = runner.run(plan_of("%%step shell\n%time squares = [i * i for i in range(5)]\nlisting = !echo hello\n"))
    assert run.status == "done", run.steps["shell"].error
    assert run.value("squares") == [0, 1, 4, 9, 16]
    assert list(run.value("listing")) == ["hello"]
    assert "Wall time" in run.logs("shell")


def test_logs_hold_what_the_step_printed(runner):
    run = runner.run(plan_of("%%step talk\nprint('hello log')\nimport sys\nprint('to stderr', file=sys.stderr)\n"))
    log = run.logs("talk")
    assert "hello log" in log and "to stderr" in log


def test_a_secret_gets_its_local_stand_in_from_the_kernel_environment_and_never_touches_disk(runner, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "s3cr3t-stand-in")
    run = runner.run(
        plan_of(
            "%%step connect --secret db-creds:password=DB_PASSWORD\nimport os\nlength = len(os.environ['DB_PASSWORD'])\n"
        )
    )
    assert run.status == "done", run.steps["connect"].error
    assert run.value("length") == len("s3cr3t-stand-in")
    for path in runner.store.run_dir(run.id).iterdir():
        assert "s3cr3t-stand-in" not in path.read_text(errors="replace"), path


INTERRUPT_SCRIPT = r"""
import os, signal, sys, threading, time
from pathlib import Path
from IPython.core.interactiveshell import InteractiveShell
signal.signal(signal.SIGINT, signal.default_int_handler)  # as ipykernel does while a cell runs
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "nbmagic")
pid_file = Path(sys.argv[1])
# the cell runs in this kernel too: only the pipeline's copy (with --env IN_PIPELINE=1) sleeps
ip.run_cell("%%step slow --env IN_PIPELINE=1\nimport os, time\nif os.environ.get('IN_PIPELINE'):\n    open(" + repr(str(pid_file)) + ", 'w').write(str(os.getpid()))\n    time.sleep(60)\n")

def interrupt():
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
result = ip.run_cell("%compile_run --quiet")
print("ERROR", type(result.error_in_exec).__name__)
from nbmagic.store.runs import RunStore
(run,) = RunStore().list_runs()
print("RUN", run.status, run.error)
"""


def test_kernel_interrupt_stops_the_run_and_its_step_processes(tmp_path):
    import subprocess
    import sys

    pid_file = tmp_path / "pid"
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_SCRIPT, str(pid_file)], capture_output=True, text=True, timeout=120
    )
    assert "ERROR KeyboardInterrupt" in done.stdout, done.stdout + done.stderr
    assert "RUN failed interrupted" in done.stdout
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"step process {pid} still running after the interrupt")


def test_a_new_worker_after_close_gets_the_libraries_preloaded_again(runner):
    from nbmagic.run.pool import worker_pool

    plan = plan_of("%%step warm\nimport sys\nhad_json_tool = 'json.tool' in sys.modules\n", "import json.tool\n")
    pool = worker_pool()
    pool.preload(["json.tool"])
    pool.close()
    pool.preload(["json.tool"])  # must reach the new worker, not be skipped as "already done"
    run = runner.run(plan)
    assert run.value("had_json_tool") is True


def test_step_code_runs_with_its_own_future_flags_like_the_notebook(runner):
    run = runner.run(
        plan_of("%%step typed\ndef f(x: int) -> int:\n    return x\nannotation = f.__annotations__['x']\n")
    )
    assert run.status == "done" and run.value("annotation") is int  # not the string 'int'


def test_stop_ends_a_run_waiting_to_retry_a_step(runner, tmp_path):
    import threading

    marker = tmp_path / "tried"
    plan = plan_of(
        f"%%step flaky --retries 2 --retry-backoff 60s\nopen({str(marker)!r}, 'a').write('x')\nraise RuntimeError('fails')\n",
    )
    stop = threading.Event()
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("run", runner.run(plan, stop=stop)), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not marker.exists():  # the first try ran and failed; the retry waits 60 s
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    stopped_at = time.time()
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and time.time() - stopped_at < 5  # not held up by the retry's wait
    run = done["run"]
    assert run.status == "stopped" and marker.read_text() == "x"  # never retried once stopped
