"""In-place changes: static signs, the run-time fingerprint check, re-wiring later steps, and compiled components."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nbmagic.pipeline.analysis import analyze
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner
from nbmagic.runtime.step import changed, fingerprint


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def test_loop_aliases_and_calls_that_pass_a_name_are_changes():
    info = analyze("for d in [train, test]:\n    d['x'] = 1\nadd_col(frame)\nprint(other)\n")
    assert {"train", "test", "frame"} <= info.mutated
    assert "other" not in info.mutated  # a builtin does not change its argument
    assert info.mutation_lines["train"] == 1 and info.mutation_lines["frame"] == 3


@pytest.mark.parametrize(
    "make, change",
    [
        (lambda: np.zeros((50, 4)), lambda a: a.__setitem__((3, 2), 1.0)),
        (lambda: pd.DataFrame({"a": [1, 2]}), lambda f: f.__setitem__("b", f["a"] * 2)),
        (lambda: pd.DataFrame({"a": [1, 2], "b": [3, 4]}), lambda f: f.drop(columns=["b"], inplace=True)),
        (lambda: {"rows": [[1]]}, lambda d: d["rows"][0].append(2)),
        (lambda: [np.arange(3)], lambda items: items[0].__setitem__(0, 9)),
    ],
    ids=["array", "frame-column", "frame-drop", "nested", "array-in-list"],
)
def test_a_change_in_place_changes_the_fingerprint(make, change):
    value = make()
    before = {"v": fingerprint(value)}
    assert before["v"] is not None and changed(before, {"v": value}) == []
    change(value)
    assert changed(before, {"v": value}) == ["v"]


def test_a_fitted_model_has_a_new_fingerprint():
    from sklearn.linear_model import LinearRegression

    model = LinearRegression()
    before = fingerprint(model)
    model.fit([[0.0], [1.0]], [0.0, 2.0])
    assert fingerprint(model) != before


def test_an_unseen_change_reruns_the_readers_and_is_kept_for_the_next_plan():
    sources = (
        "def touch(holder):\n    alias = holder\n    alias['k'].append(1)\n",
        "%%step load\nrows = {'k': []}\n",
        "%%step change\nn = len(wrap := [rows])\nfor h in wrap:\n    touch(h)\n",
        "%%step read\nseen = len(rows['k'])\n",
        "%pipeline_metrics seen\n",
    )
    plan = plan_of(*sources)
    assert plan.step("read").inputs == {"rows": "load"}  # nothing in the code shows the change
    run = LocalRunner(workers=2).run(plan)
    assert run.status == "done" and run.metrics["seen"] == 1  # read ran again on change's version
    again = plan_of(*sources)
    assert again.step("read").inputs == {"rows": "change"} and "rows" in again.step("change").outputs
    second = LocalRunner(workers=2).run(again)
    assert second.metrics["seen"] == 1


def test_an_unchanged_input_the_code_looks_like_changing_is_not_stored_again():
    plan = plan_of(
        "import numpy as np\n",
        "%%step load\nx = np.arange(1000)\n",
        "%%step look\nx.sort()\n",  # already sorted: nothing changes
        "%%step use\ntotal = int(x.sum())\n",
        "%pipeline_metrics total\n",
    )
    assert plan.step("use").inputs == {"x": "look"}
    run = LocalRunner(workers=1).run(plan)
    assert run.status == "done"
    assert run.steps["look"].outputs["x"]["hash"] == run.steps["load"].outputs["x"]["hash"]


@pytest.mark.slow
def test_a_compiled_component_stops_with_one_line_on_a_change_the_plan_did_not_expect(tmp_path, capfd):
    from kfp import components, local

    from nbmagic.compile.kfp import compile_pipeline

    plan = plan_of(
        "def touch(holder):\n    alias = holder\n    alias['k'].append(1)\n",
        "%%step load\nrows = {'k': []}\n",
        "%%step change\nn = len(wrap := [rows])\nfor h in wrap:\n    touch(h)\n",
        "%%step read\nseen = len(rows['k'])\n",
        "%pipeline_metrics seen\n",
    )
    compile_pipeline(plan, output=tmp_path / "p.yaml")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with pytest.raises(RuntimeError):
        components.load_component_from_file(str(tmp_path / "p.yaml"))()
    out = capfd.readouterr()
    assert "nbmagic: step 'change': changes rows in place, and later steps read rows from an earlier step" in (
        out.out + out.err
    )
