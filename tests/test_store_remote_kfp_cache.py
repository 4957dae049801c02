"""With a shared store, compiled steps never take a KFP cache hit: a cached step would record nothing in the store,
and the run there would stay "running" for good."""

from __future__ import annotations

import yaml

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan


def _tasks(store: str | None) -> dict:
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings

    make = step("make", "x = [1, 2, 3]", outputs=("x",))
    use = step("use", "n = len(x)", inputs={"x": "make"}, outputs=("n",), index=2)
    text = compile_pipeline(
        PipelinePlan("cached", (make, use), {}, ()),
        image="registry.example/nbmagic:1",
        runtime_image="registry.example/nbmagic:1",
        defaults=StepSettings(store=store),
    )
    spec = next(doc for doc in yaml.safe_load_all(text) if doc and "root" in doc)
    return spec["root"]["dag"]["tasks"]


def test_steps_cache_on_kfp_without_a_store_and_never_with_one():
    assert _tasks(None)["use"]["cachingOptions"] == {"enableCache": True}
    tasks = _tasks("s3://team-bucket/runs")
    assert {name: tasks[name]["cachingOptions"] for name in ("make", "use")} == {"make": {}, "use": {}}
