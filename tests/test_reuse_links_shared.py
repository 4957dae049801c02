"""A run's note that its values cannot be reused in a kernel travels with its shared cache entry."""

from __future__ import annotations

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store.runs import RunStore


def test_the_kernel_reuse_note_reaches_another_home_through_the_shared_cache(tmp_path, s3_store):
    plan = PipelinePlan("links", (step("t", "v = {'x': []}\nw = [v['x']]\n", outputs=("v", "w")),), {}, ())
    first = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(plan)
    assert first.status == "done" and "kernel_reuse" in first.steps["t"].outputs["v"]
    bob = RunStore(tmp_path / "bob" / "store")
    second = LocalRunner(bob).run(plan)
    assert [s.status for s in second.steps.values()] == ["cached"]
    entry = bob.cache_get(second.steps["t"].cache_key, touch=False)
    assert entry is not None and not entry.not_kept
    assert "'w' and 'v' hold a shared object" in entry.outputs["v"]["kernel_reuse"]
