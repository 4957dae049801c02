"""Review findings: the local runner shared by threads (parallel %katib trials), and what its cache key sees."""

from __future__ import annotations

import threading

from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner
from nbmagic.run.pool import WorkerPool


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def test_concurrent_preloads_from_threads_all_return_and_the_pool_keeps_working():
    pool = WorkerPool()
    try:
        done: list[str] = []

        def preload(modules: list[str]) -> None:
            pool.preload(modules)
            done.append(",".join(modules))

        threads = [
            threading.Thread(target=preload, args=(["sklearn.ensemble"],), daemon=True),
            threading.Thread(target=preload, args=(["csv"],), daemon=True),
            threading.Thread(target=preload, args=(["wave"],), daemon=True),
        ]
        threads[0].start()
        pool._ensure()  # noqa: SLF001 - make sure the first request is in flight before the others
        threads[1].start()
        threads[2].start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(done) == ["csv", "sklearn.ensemble", "wave"]
        last = threading.Thread(target=preload, args=(["colorsys"],), daemon=True)
        last.start()
        last.join(timeout=30)
        assert "colorsys" in done  # the pool still hears its worker
    finally:
        pool.close()


def test_a_step_after_another_reruns_when_that_step_reruns(tmp_path):
    """``--after`` edges carry side effects (files); a changed upstream run must not leave the step cached."""
    target = tmp_path / "out.txt"
    plan = plan_of(
        "%%pipeline_parameters\nn = 1\n",
        f"%%step write\nopen({str(target)!r}, 'w').write(str(n))\n",
        f"%%step read --after write\nvalue = float(open({str(target)!r}).read())\n",
        "%pipeline_metrics value\n",
    )
    runner = LocalRunner()
    assert runner.run(plan, {"n": 1}).metrics == {"value": 1.0}
    second = runner.run(plan, {"n": 2})
    assert second.steps["write"].status == "done"
    assert second.steps["read"].status == "done" and second.metrics == {"value": 2.0}
    third = runner.run(plan, {"n": 2})
    assert third.steps["read"].cached and third.metrics == {"value": 2.0}


def test_editing_a_local_module_a_step_imports_reruns_the_step(tmp_path, monkeypatch):
    package = tmp_path / "helpers_review_mod.py"
    package.write_text("FACTOR = 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import nbmagic.run.pool as pool_module

    pool = WorkerPool()  # a worker started here, as a kernel started next to its notebook
    monkeypatch.setattr(pool_module, "_POOL", pool)
    try:
        plan = plan_of(
            "from helpers_review_mod import FACTOR\n", "%%step a\nvalue = float(FACTOR)\n", "%pipeline_metrics value\n"
        )
        runner = LocalRunner()
        first = runner.run(plan)
        assert first.metrics == {"value": 2.0}, first.error
        package.write_text("FACTOR = 3\n")
        again = runner.run(plan)
        assert not again.steps["a"].cached and again.metrics == {"value": 3.0}
    finally:
        pool.close()


def test_a_cached_step_missing_a_value_a_new_step_reads_runs_again():
    """A value not kept the first time (no step read it) is needed now: re-run, never a KeyError."""
    first = plan_of("%%pipeline_parameters\nflag = False\n", "%%step a\nif flag:\n    x = 1\ny = 2\n")
    runner = LocalRunner()
    assert runner.run(first).status == "done"
    second = plan_of(
        "%%pipeline_parameters\nflag = False\n", "%%step a\nif flag:\n    x = 1\ny = 2\n", "%%step b\nz = x\n"
    )
    run = runner.run(second)
    assert run.status == "failed"
    assert run.steps["a"].status == "failed" and "did not assign 'x'" in run.steps["a"].error
    assert run.steps["b"].status == "skipped"


def test_an_error_inside_the_runner_marks_the_run_failed_and_stops_its_steps():
    """Not only Ctrl-C: any error escaping the scheduler (here a progress listener) must not leave a 'running' run."""
    import pytest

    plan = plan_of("%%step slow\nimport time\ntime.sleep(30)\nx = 1\n", "%%step fast\ny = 2\n")
    runner = LocalRunner()
    seen: list = []

    def listener(run, state):
        seen.append(run)
        if state is not None and state.name == "fast" and state.status == "done":
            raise RuntimeError("display broke")

    with pytest.raises(RuntimeError, match="display broke"):
        runner.run(plan, cache=False, listener=listener)
    record = runner.store.get_run(seen[0].id)
    assert record.status == "failed"
    states = {row["step"]: row["state"] for row in runner.store.step_rows(seen[0].id)}
    assert states["slow"] != "running"
