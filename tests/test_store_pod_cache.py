"""Cache hits through the store, taken inside a compiled step: the YAML run on kfp.local with an S3 store (moto)
three times; the second run executes no step code, the third only the steps reading the changed parameter."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpers.kfp_local import run_on_kfp_local
from helpers.notebook_kernel import execute_cells, store_kernel_env
from helpers.plans import step
from nbmagic.pipeline.model import Parameter, PipelinePlan


def _plan(mark) -> PipelinePlan:
    count = f"open({str(mark)!r}, 'a').write(%r)\n"
    return PipelinePlan(
        "pod-cache",
        (
            step("prep", count % "prep\n" + "import numpy as np\nX = np.arange(6.0)", outputs=("X",)),
            step(
                "scaled",
                count % "scaled\n" + "Y = X * scale",
                inputs={"X": "prep"},
                params=("scale",),
                outputs=("Y",),
                index=2,
            ),  # fmt: skip
            step(
                "fit",
                count % "fit\n" + "mean = float(Y.mean())",
                inputs={"Y": "scaled"},
                outputs=("mean",),
                metrics=("mean",),
                index=3,
            ),  # fmt: skip
            step("side", count % "side\n" + "s = 1", outputs=("s",), index=4),
            step("late", count % "late\n" + "z = 2", outputs=("z",), after=("side",), index=5),
        ),
        {"scale": Parameter("scale", 1.0, "float")},
        ("mean",),
    )


def _counts(mark) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in mark.read_text().split():
        found[line] = found.get(line, 0) + 1
    return found


@pytest.mark.slow
def test_a_second_run_takes_every_cacheable_step_from_the_store(tmp_path, s3_store, monkeypatch):
    from nbmagic.store.lineage import execution, executions
    from nbmagic.store.runs import RunStore

    mark = tmp_path / "executions.txt"
    plan = _plan(mark)  # $NBMAGIC_STORE_URI is compiled in
    runs = [{"scale": 2.0}, {"scale": 2.0}, {"scale": 3.0}]
    _, done = run_on_kfp_local(plan, tmp_path, runs, metrics="fit_metrics")
    # run 2 ran no cacheable step's code; run 3 only those reading the changed parameter; side/late always run
    assert _counts(mark) == {"prep": 1, "scaled": 2, "fit": 2, "side": 3, "late": 3}
    assert done[0].metrics == done[1].metrics == {"mean": 5.0} and done[2].metrics == {"mean": 7.5}
    for name in ("prep", "scaled", "fit"):
        hits = [line for line in done[1].logs[name].splitlines() if "store's cache" in line]
        assert len(hits) == 1 and hits[0].startswith(f"nbmagic: step {name!r}: taken from the store's cache (run ")
    assert 'nbmagic-metric {"step": "fit", "name": "mean", "value": 5.0}' in done[1].logs["fit"]
    assert "taken from the store's cache" in done[2].logs["prep"]
    assert "store's cache" not in done[2].logs["scaled"] + done[1].logs["late"] + done[1].logs["side"]
    assert s3_store.keys("team/runs/podcache/")  # the entries are under their own prefix

    reader = RunStore(tmp_path / "reader" / "store")
    first, second, third = sorted(reader.list_runs(), key=lambda r: r.started)
    assert [r.status for r in (first, second, third)] == ["done"] * 3
    assert second.metrics == {"mean": 5.0} and (first.cached, second.cached, third.cached) == (0, 3, 1)
    by_step = {ex.step: ex for ex in executions(reader, second.id)}
    for name in ("prep", "scaled", "fit"):
        ex = by_step[name]
        assert (ex.state, ex.cached) == ("cached", True)
        origin = execution(reader, int(ex.reused_execution))
        assert (origin.run_id, origin.step) == (first.id, name)
        assert f"(run {first.id} on " in done[1].logs[name]
        assert reader.step_values(second.id, name) == reader.step_values(first.id, name)
    assert (by_step["side"].cached, by_step["late"].cached) == (False, False)
    ran = {ex.step: ex.cached for ex in executions(reader, third.id)}
    assert ran == {"prep": True, "scaled": False, "fit": False, "side": False, "late": False}

    # another home restores run 2's values in a kernel
    env = {**store_kernel_env(), **s3_store.env(), "NBMAGIC_HOME": str(tmp_path / "bob")}
    texts = execute_cells(
        ["%load_ext nbmagic", f"%restore {second.id}\nprint('RESTORED', list(map(float, Y)), mean)"], env, tmp_path
    )
    assert "RESTORED [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] 5.0" in texts[1], texts[1]


@pytest.mark.slow
def test_no_team_key_no_hit_and_no_entry(tmp_path, s3_store, monkeypatch):
    mark = tmp_path / "executions.txt"
    plan = replace(_plan(mark), steps=_plan(mark).steps[:1], metrics=())
    monkeypatch.delenv("NBMAGIC_STORE_KEY")
    _, done = run_on_kfp_local(plan, tmp_path, [{}, {}])
    assert _counts(mark) == {"prep": 2}
    line = "nbmagic: step 'prep': the store's cache is off: no team key ($NBMAGIC_STORE_KEY) is set here"
    assert all(run.logs["prep"].count(line) == 1 for run in done)
    assert not s3_store.keys("team/runs/podcache/")
