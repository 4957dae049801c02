"""Review of compiling: parameter defaults kfp writes into its comment header, and other corner cases."""
from __future__ import annotations

import yaml

from nbmagic.compile.kfp import compile_pipeline
from nbmagic.pipeline.model import Parameter, PipelinePlan
from test_compile import step


def test_a_multi_line_str_parameter_default_leaves_the_yaml_parseable():
    query = "SELECT *\nFROM t\r\nWHERE x = ']' -- é"
    plan = PipelinePlan("q", (step("load", "rows = len(query)\n", params=("query",), outputs=("rows",)),),
                        {"query": Parameter("query", query, "str")}, ())
    text = compile_pipeline(plan)
    (spec,) = list(yaml.safe_load_all(text))
    assert spec["root"]["inputDefinitions"]["parameters"]["query"]["defaultValue"] == query
    assert text.startswith("# PIPELINE DEFINITION\n")
