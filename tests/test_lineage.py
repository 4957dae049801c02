"""Lineage of values produced by real local runs: producers, inputs, parameters, code hashes, cache hits, consumers."""

from __future__ import annotations

import json

import pytest
from IPython.core.error import UsageError

from helpers.compile_runs import run_twice
from helpers.shell import run_ok
from nbmagic.store.history import compare
from nbmagic.store.lineage import code_hash, executions, lineage, resolve_artifact
from nbmagic.store.runs import RunStore

CELLS = [
    "%%pipeline_parameters\nscale = 2\n",
    "%%step load\ndata = list(range(10))\n",
    "%%step feat\nfeatures = [d * scale for d in data]\n",
    "%%step fit\nweights = sum(features)\ntotal = float(weights)\n",
    "%pipeline_metrics total\n",
]


@pytest.fixture
def runs(ip):
    first, second = run_twice(ip, CELLS, "scale=3")
    return ip, first, second


def test_upstream_parameters_code_and_cache_hits(runs):
    ip, first, second = runs
    store = RunStore()
    digest = second.outputs("fit")["weights"]["hash"]
    graph = lineage(store, resolve_artifact(store, digest[:10]), second.id)
    assert [ex.step for ex in graph.upstream] == ["fit", "feat", "load"]
    fit, feat, load = graph.upstream
    assert feat.parameters == {"scale": 3} and not feat.cached
    assert load.cached and graph.origins[load.id] == (first.id, "load")  # cache hit: reused the first run's step
    assert graph.sources[fit.id] == {"features": "feat"} and graph.sources[feat.id] == {"data": "load"}
    spec = json.loads((store.root / "runs" / first.id / "load.spec.json").read_text())
    assert graph.code[load.id] == code_hash(spec["code"], spec["prelude"])  # a cached step's code is its original's
    assert fit.environment.get("python")
    text = graph.text()
    assert "weights" in text and "scale=3" in text and "cache hit (reused run" in text and "cache miss" in text
    svg = graph.svg()
    assert svg.startswith("<svg") and "scale=3" in svg and ">features<" in svg and ">fit<" in svg


def test_downstream_consumers_in_the_run_and_elsewhere(runs):
    ip, first, second = runs
    store = RunStore()
    data = resolve_artifact(store, second.outputs("load")["data"]["hash"])
    graph = lineage(store, data, second.id, name="data")
    assert [ex.step for ex in graph.downstream] == ["feat", "fit"]
    assert (first.id, "feat") in graph.other_consumers
    assert graph.other_producers == 1  # the first run made it; the second reused it


def test_lineage_magic_for_restored_and_run_variables(runs):
    ip, first, second = runs
    run_ok(ip, f"%restore {first.id} --vars features")
    graph = run_ok(ip, "%lineage features")
    assert graph.run_id == first.id and "restored into the kernel" in graph.note
    graph = run_ok(ip, "%lineage total")  # computed by the notebook cell, found in the kernel's last run
    assert graph.run_id == second.id and graph.producer.step == "fit"
    artifact_id = graph.artifact.id
    assert run_ok(ip, f"%lineage artifact:{artifact_id}").artifact.hash == graph.artifact.hash
    with pytest.raises(UsageError, match="neither a kernel variable"):
        run_ok(ip, "%lineage not-a-thing")
    ip.user_ns["local_only"] = 5
    with pytest.raises(UsageError, match="did not come from a run"):
        run_ok(ip, "%lineage local_only")


def test_compare_names_the_step_whose_code_changed(runs):
    ip, first, second = runs
    run_ok(ip, "%%step fit\nweights = sum(features) + 1\ntotal = float(weights)\n")
    third = run_ok(ip, "%compile_run --quiet --param scale=3")
    diff = compare(RunStore(), second.id, third.id)
    steps = {s.step: s for s in diff.steps}
    assert steps["fit"].code_differs and steps["fit"].values == ["total", "weights"]
    assert not steps["feat"].code_differs and not steps["load"].code_differs
    assert diff.parameters == {} and diff.metrics["total"][1] == diff.metrics["total"][0] + 1
    assert [e.step for e in executions(RunStore(), third.id)] == ["load", "feat", "fit"]
