"""Compiling: parameter defaults kfp writes into its comment header, and other corner cases."""

from __future__ import annotations

import yaml
from test_compile import step

from nbmagic.compile.kfp import compile_pipeline
from nbmagic.pipeline.model import Parameter, PipelinePlan


def test_a_multi_line_str_parameter_default_leaves_the_yaml_parseable():
    query = "SELECT *\nFROM t\r\nWHERE x = ']' -- é"
    plan = PipelinePlan(
        "q",
        (step("load", "rows = len(query)\n", params=("query",), outputs=("rows",)),),
        {"query": Parameter("query", query, "str")},
        (),
    )
    text = compile_pipeline(plan)
    (spec,) = list(yaml.safe_load_all(text))
    assert spec["root"]["inputDefinitions"]["parameters"]["query"]["defaultValue"] == query
    assert text.startswith("# PIPELINE DEFINITION\n")


def test_a_request_above_its_limit_is_one_error_before_anything_runs():
    import pytest
    from test_compile import _settings, demo_plan

    from nbmagic.errors import NbMagicError

    with pytest.raises(NbMagicError, match=r"--memory 4Gi is more than --memory-limit 2Gi"):
        _settings("--memory 4Gi --memory-limit 2Gi")
    with pytest.raises(NbMagicError, match=r"--cpu 1500m is more than --cpu-limit 1"):
        _settings("--cpu 1500m --cpu-limit 1")
    assert _settings("--cpu 0.5 --cpu-limit 500m --memory 1G --memory-limit 1000M").cpu_limit == "500m"
    # a step's request against the pipeline-wide limit: caught when compiling, naming the step
    plan = demo_plan().with_settings("fit", _settings("--memory 4Gi"))
    with pytest.raises(NbMagicError, match=r"step 'fit': --memory 4Gi is more than --memory-limit 2Gi"):
        compile_pipeline(plan, defaults=_settings("--memory-limit 2Gi"))


def test_url_and_path_requirements_are_not_merged_into_one():
    from nbmagic.packages import combine
    from nbmagic.pipeline.settings import StepSettings, merge

    urls = ["git+https://github.com/a/x.git", "git+https://github.com/b/y.git", "./libs/z", "./libs/w"]
    assert combine(["numpy==1.0"], urls, ["numpy>=2", "pkg @ https://h/p.whl"]) == [
        *urls,
        "numpy>=2",
        "pkg @ https://h/p.whl",
    ]
    merged = merge(StepSettings(packages=tuple(urls[:2])), StepSettings(packages=tuple(urls[2:])))
    assert merged.packages == tuple(urls)
