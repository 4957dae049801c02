"""Resolving recorded cells into a plan: inferred and explicit edges, and every kind of bad input."""

from __future__ import annotations

import pytest

from nbmagic.errors import PipelineError
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan


def plan_of(*sources: str, **kwargs):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells), **kwargs)


BASE = (
    "import math\n",
    "%%pipeline_parameters\nlr = 0.5\nepochs = 3\nkind = 'a'\nverbose = False\n",
    "def scale(v):\n    return v * factor\n",
    "%%step load\ndata = [1, 2, 3]\nfactor = 2\n",
    "%%step process\nfeatures = [scale(v) for v in data]\n",
    "%%step train\nmodel = sum(features) * lr\nloss = math.fabs(model - epochs)\n",
    "%%step report --after train\nprint('done')\n",
    "%pipeline_metrics loss\n",
)


def test_edges_are_inferred_from_data_flow_and_explicit_after():
    plan = plan_of(*BASE)
    assert [s.name for s in plan.steps] == ["load", "process", "train", "report"]
    process = plan.step("process")
    assert process.inputs == {"data": "load", "factor": "load"}  # `factor` is read by the notebook function
    assert "def scale" in process.prelude
    train = plan.step("train")
    assert train.inputs == {"features": "process"}
    assert train.parameters == ("lr", "epochs")
    assert "import math" in train.prelude and train.modules == ("math",)
    assert train.metrics == ("loss",) and "loss" in train.outputs
    edges = {(e.source, e.target): e for e in plan.edges}
    assert edges[("train", "report")].explicit and edges[("train", "report")].variables == ()
    assert edges[("load", "process")].variables == ("data", "factor")


def test_parameters_are_typed_from_their_defaults():
    plan = plan_of(*BASE)
    assert {n: p.type for n, p in plan.parameters.items()} == {
        "lr": "float",
        "epochs": "int",
        "kind": "str",
        "verbose": "bool",
    }
    assert plan.resolve_parameters({"lr": "0.1", "epochs": "7", "verbose": "true"}) == {
        "lr": 0.1,
        "epochs": 7,
        "kind": "a",
        "verbose": True,
    }
    with pytest.raises(PipelineError, match="parameter 'epochs' is int; '1.5' is not a valid int"):
        plan.resolve_parameters({"epochs": "1.5"})
    with pytest.raises(PipelineError, match="unknown parameter 'momentum'"):
        plan.resolve_parameters({"momentum": "1"})


def test_nearest_earlier_writer_wins():
    plan = plan_of("%%step a\nx = 1\n", "%%step b\nx = 2\n", "%%step c\ny = x\n")
    assert plan.step("c").inputs == {"x": "b"}


def test_explicit_after_can_order_against_notebook_order():
    plan = plan_of("%%step first --after second\nx = 1\n", "%%step second\ny = 2\n")
    assert [s.name for s in plan.steps] == ["second", "first"]


@pytest.mark.parametrize(
    "sources, message",
    [
        (("%%step a --after ghost\nx = 1\n",), "step 'a': --after names unknown step 'ghost'"),
        (("%%step a --after b\nx = 1\n", "%%step b --after a\ny = 2\n"), "cycle through --after: a -> b"),
        (("%%step 2fast\nx = 1\n",), "invalid step name '2fast'"),
        (
            ("%%pipeline_parameters\nlr = 1 / 3\n", "%%step a\nx = lr\n"),
            "cell 1, line 2: parameter 'lr' must be a literal",
        ),
        (("%%pipeline_parameters\nlr = [1]\n", "%%step a\nx = lr\n"), "parameter 'lr' is a list"),
        (("%%pipeline_parameters\nprint(1)\n", "%%step a\nx = 1\n"), "cell 1, line 2: only `name = value`"),
        (("%%step a\nx = 1\n", "%pipeline_metrics acc\n"), "metric 'acc' is not assigned by any step"),
        (
            ("%%step a\nx = y + 1\n",),
            "step 'a' uses variable 'y', which no earlier step, parameter, import or notebook function provides",
        ),
        (
            ("%%step a\nx = y + 1\n", "%%step b\ny = 2\n"),
            "it is assigned in step 'b' \\(cell 2 \\(step b\\)\\), which comes later",
        ),
        (
            ("%%step a\nx = 1\n", "y = x + 1\n", "%%step b\nz = y\n"),
            "step 'b' .*'y'.*'x', a step's value; it is assigned in cell 2, an ordinary cell",
        ),
        (("x = 1\n",), "no steps recorded"),
        (("%%step a --memory 2GG\nx = 1\n",), "--memory: '2GG' is not a memory quantity"),
    ],
)
def test_bad_input_is_one_clear_error(sources, message):
    with pytest.raises(PipelineError) as caught:
        plan_of(*sources)
    text = str(caught.value)
    assert "\n" not in text
    import re

    assert re.search(message, text), text


def test_pipeline_name_comes_from_the_notebook_file():
    plan = plan_of("%%step a\nx = 1\n", notebook_path="/tmp/my data-prep.ipynb")
    assert plan.name == "my_data_prep"
