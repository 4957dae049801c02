"""Compile a PipelinePlan with the real kfp compiler and check the IR; the readable DSL export compiles to the same IR."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from IPython.core import magic_arguments

from helpers.plans import step
from nbmagic.compile.bundle import runtime_base64
from nbmagic.compile.kfp import compile_pipeline, export_dsl
from nbmagic.compile.literals import literal
from nbmagic.errors import PipelineError
from nbmagic.pipeline.model import Parameter, PipelinePlan
from nbmagic.pipeline.settings import SETTING_ARGUMENTS, StepSettings, settings_from_args


def demo_plan(**changes) -> PipelinePlan:
    steps = (
        step("load", "data = list(range(n))\n", params=("n",), outputs=("data",), modules=("json",), index=1),
        step(
            "fit",
            "model = fit(data, rate)\n",
            inputs={"data": "load"},
            params=("rate", "label"),
            outputs=("model",),
            prelude="import numpy as np\n\ndef fit(values, rate):\n    return np.mean(values) * rate\n",
            modules=("numpy",),
            index=2,
        ),
        step("report", "print('report')\n", after=("load",), index=3),
        step(
            "score",
            "score = float(model) + (1 if verbose else 0)\ncount = 3\n",
            inputs={"model": "fit"},
            params=("verbose",),
            outputs=("score", "count"),
            metrics=("score", "count"),
            after=("report",),
            index=4,
        ),
    )
    parameters = {
        "n": Parameter("n", 10, "int"),
        "rate": Parameter("rate", 0.5, "float"),
        "label": Parameter("label", 'it\'s "quoted"', "str"),
        "verbose": Parameter("verbose", False, "bool"),
    }
    plan = PipelinePlan("Demo_Pipeline", steps, parameters, ("score", "count"), notebook="demo.ipynb")
    return replace(plan, **changes)


def load_ir(text: str) -> list[dict]:
    return list(yaml.safe_load_all(text))


def executor(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def pip_line(spec: dict, task: str) -> str:
    return executor(spec, task)["command"][2]


def test_ir_has_one_component_per_step_typed_parameters_artifacts_and_metrics():
    (spec,) = load_ir(compile_pipeline(demo_plan()))
    assert spec["pipelineInfo"]["name"] == "demo-pipeline"
    assert spec["root"]["inputDefinitions"]["parameters"] == {
        "n": {"parameterType": "NUMBER_INTEGER", "defaultValue": 10.0, "isOptional": True},
        "rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.5, "isOptional": True},
        "label": {"parameterType": "STRING", "defaultValue": 'it\'s "quoted"', "isOptional": True},
        "verbose": {"parameterType": "BOOLEAN", "defaultValue": False, "isOptional": True},
    }
    tasks = spec["root"]["dag"]["tasks"]
    runtime = tasks.pop("nbmagic-runtime-package")  # writes nbmagic's runtime once per run (python:3.x steps)
    assert runtime["taskInfo"]["name"] == "nbmagic runtime" and "inputs" not in runtime
    assert set(tasks) == {"load", "fit", "report", "score"}
    assert tasks["fit"]["inputs"]["artifacts"]["in_data"]["taskOutputArtifact"] == {
        "outputArtifactKey": "out_data",
        "producerTask": "load",
    }
    assert tasks["fit"]["inputs"]["parameters"]["rate"] == {"componentInputParameter": "rate"}
    # every step takes the runtime's artifact, so it runs after its writer
    assert tasks["report"]["dependentTasks"] == ["load", "nbmagic-runtime-package"]  # explicit --after, no data
    assert sorted(tasks["score"]["dependentTasks"]) == ["fit", "nbmagic-runtime-package", "report"]
    assert tasks["score"]["taskInfo"]["name"] == "score"
    score = spec["components"]["comp-score"]
    # metrics nobody downstream reads are logged, not shipped as artifacts
    assert set(score["outputDefinitions"]["artifacts"]) == {"metrics"}
    assert score["outputDefinitions"]["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert score["inputDefinitions"]["parameters"]["verbose"]["parameterType"] == "BOOLEAN"
    assert spec["root"]["outputDefinitions"]["artifacts"] == {
        "score_metrics": {"artifactType": {"schemaTitle": "system.Metrics", "schemaVersion": "0.0.1"}}
    }
    assert spec["root"]["dag"]["outputs"]["artifacts"]["score_metrics"]["artifactSelectors"] == [
        {"outputArtifactKey": "metrics", "producerSubtask": "score"}
    ]
    # steps that produce metrics always run on a cluster (their log carries the values); the others cache
    assert runtime["cachingOptions"] == {"enableCache": True}  # the same package for every run
    assert {n: t["cachingOptions"] for n, t in tasks.items()} == {
        n: ({} if n == "score" else {"enableCache": True}) for n in tasks
    }


def test_components_embed_the_cell_and_the_prelude_and_import_the_runtime_package():
    (spec,) = load_ir(compile_pipeline(demo_plan()))
    container = executor(spec, "fit")
    source = container["command"][-1]
    assert container["args"][-1] == "fit"
    assert "def fit(values, rate):\n    return np.mean(values) * rate" in source  # prelude kept readable
    assert "model = fit(data, rate)" in source
    module = ast.parse(source)  # the component program is valid Python with our helpers defined once
    names = [n.name for n in module.body if isinstance(n, ast.FunctionDef)]
    assert names == ["fit"]
    (fit,) = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "fit"]
    assert "from nbmagic.runtime.component import nbmagic_run" in ast.unparse(fit)
    assert "def execute(" not in source and "def save(" not in source  # the runtime is not pasted text
    assert "sys.path.insert(0, nbmagic_runtime.path)" in ast.unparse(fit)  # the zip, downloaded by KFP's launcher
    # the runtime travels once: one task writes it as an artifact, which every step takes as an input
    tasks = spec["root"]["dag"]["tasks"]
    writer = tasks.pop("nbmagic-runtime-package")
    assert {
        t["inputs"]["artifacts"]["nbmagic_runtime"]["taskOutputArtifact"]["producerTask"] for t in tasks.values()
    } == {"nbmagic-runtime-package"}
    assert all("nbmagic_runtime" not in t["inputs"].get("parameters", {}) for t in tasks.values())
    assert writer["componentRef"]["name"] == "comp-nbmagic-runtime-package"
    writes = executor(spec, "nbmagic-runtime-package")["command"][-1]
    assert runtime_base64()[:100] in writes and "base64.b64decode(" in writes
    assert compile_pipeline(demo_plan()).count(runtime_base64()[:100]) == 1  # in that one component only


def test_a_step_in_the_cluster_image_imports_its_runtime_and_carries_none(monkeypatch):
    monkeypatch.setenv("NBMAGIC_IMAGE", "registry.example/nbmagic:9")
    plan = demo_plan().with_settings("fit", StepSettings(image="registry.example/nbmagic:9"))
    (spec,) = load_ir(compile_pipeline(plan))
    fit = executor(spec, "fit")
    assert fit["image"] == "registry.example/nbmagic:9"
    # a container component running the image's step executor: its arguments are the step's data
    assert fit["command"] == ["python3", "-m", "nbmagic.runtime.executor"]
    assert fit["args"][0] == "{{$}}" and fit["args"][2] == "model = fit(data, rate)\n"
    # the image lacks the cell's own libraries: the executor installs them, as a Python component's command does
    assert json.loads(fit["args"][1])["packages"] == [f"numpy=={metadata.version('numpy')}"]
    assert "nbmagic_runtime" not in spec["components"]["comp-fit"]["inputDefinitions"].get("artifacts", {})
    assert "nbmagic_runtime.path" in executor(spec, "load")["command"][-1]  # python:3.x still gets the zip
    # every step in the image: no runtime anywhere in the pipeline
    text = compile_pipeline(demo_plan(), image="registry.example/other:1", runtime_image="registry.example/other:1")
    (spec,) = load_ir(text)
    assert "nbmagic-runtime-package" not in spec["root"]["dag"]["tasks"]
    assert "nbmagic_runtime" not in text and runtime_base64()[:100] not in text


def test_packages_are_pinned_to_this_environment_and_images_settable():
    plan = demo_plan(image="python:3.11-slim", packages=("rich",))
    fit_settings = StepSettings(image="example.com/fit:1", packages=("numpy>=1.0", "scipy"))
    plan = plan.with_settings("fit", fit_settings)
    (spec,) = load_ir(compile_pipeline(plan, packages=("tqdm==4.0",)))
    numpy_pin = f"'numpy=={metadata.version('numpy')}'"
    dill_pin = f"'dill=={metadata.version('dill')}'"
    assert executor(spec, "load")["image"] == "python:3.11-slim"
    assert executor(spec, "fit")["image"] == "example.com/fit:1"
    load_pip, fit_pip, score_pip = (pip_line(spec, t) for t in ("load", "fit", "score"))
    assert dill_pin in load_pip and "'rich'" in load_pip and "'tqdm==4.0'" in load_pip
    assert "numpy" not in load_pip  # load imports only the standard library
    assert "'numpy>=1.0'" in fit_pip and numpy_pin not in fit_pip and "'scipy'" in fit_pip  # the step's own wins
    assert numpy_pin in score_pip  # score loads fit's numpy value
    assert "'kfp==" in load_pip  # kfp still installs itself (no kfp* requirement of ours blocks it)
    (spec,) = load_ir(compile_pipeline(demo_plan(), image="registry.local/base:2"))
    assert executor(spec, "score")["image"] == "registry.local/base:2"
    (spec,) = load_ir(compile_pipeline(demo_plan()))
    assert executor(spec, "score")["image"] == f"python:{sys.version_info.major}.{sys.version_info.minor}"


def _settings(line: str) -> StepSettings:
    def magic(line):
        return line

    for args, kwargs in reversed(SETTING_ARGUMENTS):
        magic = magic_arguments.argument(*args, **kwargs)(magic)
    magic = magic_arguments.magic_arguments()(magic)
    return settings_from_args(magic_arguments.parse_argstring(magic, line))


EVERY_SETTING = (
    "--cpu 500m --cpu-limit 2 --memory 1Gi --memory-limit 2Gi --gpu nvidia.com/gpu=2 --retries 3 --retry-backoff 30s "
    "--timeout 10m --env MODE=fast --secret db-creds:password=DB_PASSWORD --secret db-creds:user=DB_USER "
    "--secret-file tls:/etc/tls --volume data:/mnt/data --node-selector pool=gpu --toleration gpu=true:NoSchedule "
    "--toleration spot --image python:3.11-slim --packages pyyaml --no-cache"
)


def test_every_setting_appears_in_the_ir_as_kfp_emits_it(tmp_path):
    plan = demo_plan().with_settings("fit", _settings(EVERY_SETTING))
    text = compile_pipeline(plan, output=tmp_path / "p.yaml")
    assert (tmp_path / "p.yaml").read_text() == text
    spec, platform = load_ir(text)
    task = spec["root"]["dag"]["tasks"]["fit"]
    assert task["cachingOptions"] == {}  # caching off: enableCache false is omitted by the proto
    assert task["retryPolicy"] == {
        "maxRetryCount": 3,
        "backoffDuration": "30s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "3600s",
    }
    container = executor(spec, "fit")
    assert container["image"] == "python:3.11-slim"
    assert container["env"] == [{"name": "MODE", "value": "fast"}]
    resources = container["resources"]
    assert resources["resourceCpuRequest"] == "500m" and resources["resourceCpuLimit"] == "2"
    assert resources["resourceMemoryRequest"] == "1Gi" and resources["resourceMemoryLimit"] == "2Gi"
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "2"
    assert "'pyyaml'" in pip_line(spec, "fit")
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == {"exec-fit"}  # other steps carry no kubernetes config
    fit = k8s["exec-fit"]
    assert fit["activeDeadlineSeconds"] == "600"
    assert fit["nodeSelector"] == {"labels": {"pool": "gpu"}}
    assert fit["pvcMount"][0]["mountPath"] == "/mnt/data"
    assert fit["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "data"
    (secret_env,) = fit["secretAsEnv"]
    assert secret_env["secretNameParameter"]["runtimeValue"]["constant"] == "db-creds"
    assert secret_env["keyToEnv"] == [
        {"secretKey": "password", "envVar": "DB_PASSWORD"},
        {"secretKey": "user", "envVar": "DB_USER"},
    ]
    (secret_volume,) = fit["secretAsVolume"]
    assert secret_volume["mountPath"] == "/etc/tls"
    assert secret_volume["secretNameParameter"]["runtimeValue"]["constant"] == "tls"
    assert fit["tolerations"] == [
        {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"},
    ]
    other = spec["root"]["dag"]["tasks"]["load"]
    assert "retryPolicy" not in other and other["cachingOptions"] == {"enableCache": True}
    assert "resources" not in executor(spec, "load") and "env" not in executor(spec, "load")


def test_pipeline_defaults_merge_under_step_settings():
    plan = demo_plan().with_settings("fit", _settings("--retries 5 --env B=step"))
    spec, platform = load_ir(compile_pipeline(plan, defaults=_settings("--retries 1 --env A=1 --env B=2 --timeout 1m")))
    assert spec["root"]["dag"]["tasks"]["fit"]["retryPolicy"]["maxRetryCount"] == 5
    assert spec["root"]["dag"]["tasks"]["load"]["retryPolicy"]["maxRetryCount"] == 1
    assert executor(spec, "fit")["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "step"}]
    timeouts = {
        k: v["activeDeadlineSeconds"]
        for k, v in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()
    }
    assert timeouts == {f"exec-{t}": "60" for t in ("load", "fit", "report", "score")}


def test_no_secret_value_reaches_the_ir(monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "s3cr3t-value-xyz")
    plan = demo_plan().with_settings("fit", _settings("--secret db-creds:password=DB_PASSWORD"))
    text = compile_pipeline(plan)
    assert "s3cr3t-value-xyz" not in text
    assert "DB_PASSWORD" in text


def test_export_dsl_compiles_with_kfp_to_the_same_ir(tmp_path):
    plan = demo_plan().with_settings("fit", _settings(EVERY_SETTING))
    ours_text = compile_pipeline(plan)
    ours = load_ir(ours_text)
    path = export_dsl(plan, tmp_path / "pipeline.py")
    text = path.read_text()
    assert "@dsl.pipeline(name='demo-pipeline'" in text
    assert "kubernetes.use_secret_as_env(fit_task, secret_name='db-creds'" in text
    assert "fit_task.set_memory_limit('2Gi')" in text
    assert "        code='''model = fit(data, rate)\n'''," in text  # cell code stays readable
    # compiled by kfp in a fresh interpreter, as an engineer would after review
    out = tmp_path / "exported.yaml"
    subprocess.run([sys.executable, str(path), str(out)], check=True, cwd=tmp_path, capture_output=True)
    assert load_ir(out.read_text()) == ours
    assert out.read_text() == ours_text  # the very same YAML, byte for byte


def test_compiling_is_deterministic():
    assert compile_pipeline(demo_plan()) == compile_pipeline(demo_plan())


def test_names_that_would_clash_get_distinct_identifiers():
    steps = (
        step("Input", "X = 1\nin_X = 2\n", outputs=("X", "in_X"), index=1),
        step(
            "print",
            "metrics = X + in_X + in_X_ + pipeline\n",
            inputs={"X": "Input", "in_X": "Input"},
            params=("in_X_", "pipeline_"),
            outputs=("metrics",),
            metrics=("metrics",),
            index=2,
        ),
    )
    parameters = {"in_X_": Parameter("in_X_", 1, "int"), "pipeline_": Parameter("pipeline_", 2, "int")}
    plan = PipelinePlan("clash", steps, parameters, ("metrics",))
    (spec,) = load_ir(compile_pipeline(plan))
    comp = spec["components"]["comp-print-step"]
    assert set(comp["inputDefinitions"]["parameters"]) == {"in_X_", "pipeline_"}
    assert set(comp["inputDefinitions"]["artifacts"]) == {"in_X", "in_in_X", "nbmagic_runtime"}
    assert set(comp["outputDefinitions"]["artifacts"]) == {"metrics"}
    assert spec["root"]["dag"]["tasks"]["print-step"]["taskInfo"]["name"] == "print"


def test_a_plan_without_parameters_or_metrics_compiles_to_a_pipeline_without_outputs():
    plan = PipelinePlan("solo", (step("only", "print('hello')\n"),), {}, ())
    (spec,) = load_ir(compile_pipeline(plan))
    assert sorted(spec["root"]["dag"]["tasks"]) == ["nbmagic-runtime-package", "only"]  # and the runtime's writer
    assert "outputDefinitions" not in spec["root"] and "inputDefinitions" not in spec["root"]


def test_bad_plans_are_one_line_errors():
    with pytest.raises(PipelineError, match="has no steps"):
        compile_pipeline(replace(demo_plan(), steps=()))
    plan = replace(demo_plan(), parameters={**demo_plan().parameters, "dsl": Parameter("dsl", 1, "int")})
    with pytest.raises(PipelineError, match="parameter 'dsl' shadows"):
        compile_pipeline(plan)


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "a\nb",
        "ends with quote'\n",
        "'''\n\"\"\"\n",
        "back\\slash\n\\n",
        "tab\there\n",
        "cr\r\n",
        "é ü 中\n",
        "",
        ("x",),
        ["a", 1, 2.5, True, None],
        {"k": "v\n"},
    ],
)
def test_literals_round_trip(value):
    assert ast.literal_eval(literal(value)) == value


def test_multiline_code_is_written_as_a_readable_block():
    assert literal("x = 1\nprint('hi')\n") == "'''x = 1\nprint('hi')\n'''"
