"""Steps compiled for nbmagic's cluster image: container components whose arguments are the step's data, run by
``nbmagic.runtime.executor`` through KFP's own executor. Run end to end by kfp.local (DockerRunner, each container
run as a process of this environment, which has what the image has) with the metrics of the python:3.x pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from helpers.kfp_image import run_containers_here
from helpers.kfp_outputs import metrics_from_outputs
from helpers.plans import step
from nbmagic.compile.kfp import compile_pipeline, export_dsl
from nbmagic.pipeline.model import Parameter, PipelinePlan

IMAGE = "registry.example/nbmagic:test"
PRELUDE = "import json\n\n\ndef weigh(values, rate):\n    return [v * rate for v in values]\n"


def plan(code: str = "total = sum(scaled)\ncount = len(scaled)\n") -> PipelinePlan:
    steps = (
        step("load", "data = [float(i) for i in range(n)]\n", params=("n",), outputs=("data",), index=2),
        step(
            "weight",
            "scaled = weigh(data, rate)\n",
            inputs={"data": "load"},
            params=("rate",),
            outputs=("scaled",),
            prelude=PRELUDE,
            modules=("json",),
            index=3,
        ),
        step(
            "score",
            code + "print('scored', json.dumps(scaled))\n",
            inputs={"scaled": "weight", "data": "load"},
            params=("rate",),
            outputs=("total", "count"),
            metrics=("total", "count"),
            prelude=PRELUDE,
            index=4,
        ),
    )
    parameters = {"n": Parameter("n", 5, "int"), "rate": Parameter("rate", 2.0, "float")}
    return PipelinePlan("weights", steps, parameters, ("total", "count"), notebook="weights.ipynb")


def executors(text: str) -> dict:
    return yaml.safe_load(text)["deploymentSpec"]["executors"]


def test_an_image_step_is_its_data_not_a_program():
    text = compile_pipeline(plan(), image=IMAGE, runtime_image=IMAGE)
    container = executors(text)["exec-score"]["container"]
    assert container["command"] == ["python3", "-m", "nbmagic.runtime.executor"]
    placeholder, spec, code, prelude = container["args"]
    assert placeholder == "{{$}}" and code.startswith("total = sum(scaled)") and prelude == PRELUDE
    assert json.loads(spec) == {
        "version": 1,  # the executor refuses a newer spec rather than skip what it cannot read
        "step": "score",
        "label": "demo.ipynb cell 4",
        "parameters": {"rate": ["rate", "float"]},
        "inputs": {"scaled": "in_scaled", "data": "in_data"},
        "metrics": "metrics",
        "metric_names": ["total", "count"],
    }
    # metrics no later step reads are logged, not shipped as artifacts
    assert "sh" not in container["command"] and "nbmagic_runtime" not in text and "kfp==" not in text


def test_the_exported_dsl_of_an_image_pipeline_compiles_to_the_same_yaml(tmp_path):
    ours = compile_pipeline(plan(), image=IMAGE, runtime_image=IMAGE)
    path = export_dsl(plan(), tmp_path / "weights.py", image=IMAGE, runtime_image=IMAGE)
    text = path.read_text()
    assert "@dsl.container_component" in text and "scaled = weigh(data, rate)" in text  # the cell, readable
    out = tmp_path / "exported.yaml"
    subprocess.run([sys.executable, str(path), str(out)], check=True, cwd=tmp_path, capture_output=True)
    assert out.read_text() == ours


@pytest.mark.slow
def test_the_image_pipeline_runs_on_kfp_local_with_the_python_pipelines_metrics(tmp_path, monkeypatch, capfd):
    from kfp import components, local

    run_containers_here(monkeypatch)
    overrides = {"n": 7, "rate": 3.0}
    image_yaml = tmp_path / "image.yaml"
    compile_pipeline(plan(), output=image_yaml, image=IMAGE, runtime_image=IMAGE)
    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path / "image-root"), raise_on_error=True)
    from_image = components.load_component_from_file(str(image_yaml))(**overrides)
    image_log = capfd.readouterr().out

    compile_pipeline(plan(), output=tmp_path / "python.yaml")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "py-root"))
    from_python = components.load_component_from_file(str(tmp_path / "python.yaml"))(**overrides)

    ours = metrics_from_outputs(plan(), from_image)
    assert ours == metrics_from_outputs(plan(), from_python) == {"total": 63.0, "count": 7.0}
    assert "scored [0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0]" in image_log
    assert 'nbmagic-metric {"step": "score", "name": "count", "value": 7}' in image_log
    # values crossed the edges as nbmagic's marshalled artifacts, with their metadata in KFP's executor output
    (output,) = (tmp_path / "image-root").glob("weights-*/weight/executor_output.json")
    meta = json.loads(output.read_text())["artifacts"]["out_scaled"]["artifacts"][0]["metadata"]
    assert meta["type"] == "list" and {"format", "hash"} <= set(meta)


@pytest.mark.slow
def test_a_failing_image_step_reports_the_notebook_cell(tmp_path, monkeypatch, capfd):
    from kfp import components, local

    run_containers_here(monkeypatch)
    broken = plan(code="total = sum(scaled) / (count := 0)\n")
    compile_pipeline(broken, output=tmp_path / "broken.yaml", image=IMAGE, runtime_image=IMAGE)
    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path / "root"), raise_on_error=False)
    task = components.load_component_from_file(str(tmp_path / "broken.yaml"))()
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert not task.outputs
    assert 'File "demo.ipynb cell 4", line 2, in <module>' in log  # line 1 is the %%step line
    assert "nbmagic: step 'score': ZeroDivisionError in demo.ipynb cell 4" in log
