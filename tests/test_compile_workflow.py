"""The Argo Workflow KFP's backend makes from compiled YAML (estimated from the IR as its compiler and driver build it):
nbmagic's runtime is in it once, whatever the number of steps, and each step adds a few KB."""

from __future__ import annotations

import json

from helpers.plans import step
from nbmagic.compile.bundle import runtime_base64
from nbmagic.compile.kfp import compile_pipeline
from nbmagic.compile.workflow import ARGO_LIMIT, build, estimate
from nbmagic.pipeline.model import Parameter, PipelinePlan

HELPER = "def inc(v):\n    return v + 1\n"


def chain(n: int, *, blob: str = "") -> PipelinePlan:
    """n steps, each reading the previous step's value and the parameter ``scale`` (and ``blob`` when given)."""
    params = ("scale", "blob") if blob else ("scale",)
    steps = [step("s0", "x0 = inc(scale)\n", params=params, outputs=("x0",), prelude=HELPER, index=2)]
    for i in range(1, n):
        code = f"x{i} = inc(x{i - 1}) * scale\n"
        metrics = (f"x{i}",) if i == n - 1 else ()
        steps.append(
            step(f"s{i}", code, inputs={f"x{i - 1}": f"s{i - 1}"}, params=params, outputs=(f"x{i}",),
                 metrics=metrics, prelude=HELPER, index=2 + i)
        )  # fmt: skip
    parameters = {"scale": Parameter("scale", 2, "int")}
    if blob:
        parameters["blob"] = Parameter("blob", blob, "str")
    return PipelinePlan("chain", tuple(steps), parameters, (f"x{n - 1}",))


def test_the_runtime_is_in_the_workflow_once_and_steps_read_it_by_uri():
    workflow, nodes = build(compile_pipeline(chain(6)))
    piece = runtime_base64()[:100]
    arguments = workflow["spec"]["arguments"]["parameters"]
    assert [a["name"].split("-")[0] for a in arguments if piece in a["value"]] == ["implementations"]
    # the root DAG: a driver and an executor task per step, the runtime's writer being one more step
    tasks = workflow["spec"]["templates"][-1]["dag"]["tasks"]
    assert len(tasks) == 2 * 7 and {t["name"] for t in tasks} >= {"s3", "s3-driver", "nbmagic-runtime-package"}
    for node in nodes.values():
        text = json.dumps(node)
        assert (piece in text) == node["displayName"].startswith("nbmagic-runtime-package"), node["displayName"]
    (driver,) = [n for n in nodes.values() if n["displayName"] == "s3-driver"]
    patch = json.loads(next(p["value"] for p in driver["outputs"]["parameters"] if p["name"] == "pod-spec-patch"))
    (main,) = patch["containers"]
    executor_input = json.loads(main["command"][main["command"].index("--executor_input") + 1])
    (runtime,) = executor_input["inputs"]["artifacts"]["nbmagic_runtime"]["artifacts"]
    assert runtime["uri"].startswith("minio://") and "/nbmagic-runtime-package/" in runtime["uri"]
    assert executor_input["inputs"]["parameterValues"] == {"scale": 2}
    assert not any("{{$}}" in a for a in main["args"])  # the step's own command with the executor input filled in


def test_each_step_adds_a_few_kb_and_a_hundred_steps_fit_a_cluster():
    small, large = estimate(compile_pipeline(chain(10))), estimate(compile_pipeline(chain(40)))
    assert (small.steps, large.steps) == (11, 41)
    assert (large.spec - small.spec) / 30 < 6_000  # component, container and task spec, each step's own
    assert (large.stored - small.stored) / 30 < 12_000  # with the status Argo keeps, gzipped past its limit
    hundred = estimate(compile_pipeline(chain(100)))
    assert hundred.stored < ARGO_LIMIT and hundred.spec < ARGO_LIMIT / 2


def test_a_value_every_step_reads_is_kept_in_every_steps_nodes():
    """Why the runtime must not be a parameter: KFP's driver writes each step's executor input twice into its pod
    spec patch, which Argo keeps on three nodes (driver outputs, executor inputs, pod inputs)."""
    blob = "".join(f"{i:05d}" for i in range(4000))  # 20 KB
    without, with_blob = estimate(compile_pipeline(chain(5))), estimate(compile_pipeline(chain(5, blob=blob)))
    assert with_blob.status - without.status >= 5 * 6 * len(blob)
    assert with_blob.spec - without.spec < 3 * len(blob)  # the spec: the default, and the root driver's config
