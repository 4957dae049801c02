"""The compiled YAML runs unchanged on kfp.local's SubprocessRunner and yields the metrics of a direct run.

kfp.local pip-installs each task's requirements (already satisfied here) and runs tasks one after another, so this
file takes ~30 s; the pipeline is the issue's digits workflow kept small.
"""

from __future__ import annotations

import json

import pytest

from helpers.kfp_outputs import metrics_from_outputs
from helpers.plans import step as plan_step
from nbmagic.compile.kfp import compile_pipeline
from nbmagic.pipeline.model import Cell, Parameter, PipelinePlan, StepPlan
from nbmagic.runtime import marshal
from nbmagic.runtime.step import execute

pytestmark = pytest.mark.slow


def _step(name, index, code, prelude, **fields):
    return plan_step(name, code, index=index, prelude=prelude, notebook="digits.ipynb", **fields)


def digits_plan() -> PipelinePlan:
    """load -> process -> (train_logreg, train_tree) -> evaluate, with parameters and metrics."""
    steps = (
        _step(
            "load",
            2,
            "X, y = load_digits(return_X_y=True)\n",
            "from sklearn.datasets import load_digits\n",
            outputs=("X", "y"),
            modules=("sklearn",),
        ),
        _step(
            "process",
            3,
            "X_train, X_test, y_train, y_test = train_test_split(\n"
            "    X / 16.0, y, test_size=test_size, random_state=seed)\n",
            "from sklearn.model_selection import train_test_split\n",
            inputs={"X": "load", "y": "load"},
            params=("test_size", "seed"),
            outputs=("X_train", "X_test", "y_train", "y_test"),
            modules=("sklearn",),
        ),
        _step(
            "train_logreg",
            4,
            "logreg = LogisticRegression(C=C, max_iter=500).fit(X_train, y_train)\n",
            "from sklearn.linear_model import LogisticRegression\n",
            inputs={"X_train": "process", "y_train": "process"},
            params=("C",),
            outputs=("logreg",),
            modules=("sklearn",),
        ),
        _step(
            "train_tree",
            5,
            "tree = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(X_train, y_train)\n",
            "from sklearn.tree import DecisionTreeClassifier\n",
            inputs={"X_train": "process", "y_train": "process"},
            params=("depth", "seed"),
            outputs=("tree",),
            modules=("sklearn",),
        ),
        _step(
            "evaluate",
            6,
            "logreg_accuracy = accuracy(logreg)\ntree_accuracy = accuracy(tree)\nn_test = int(np.size(y_test))\n"
            "print(f'it\\'s done: {logreg_accuracy:.3f} {tree_accuracy:.3f}')\n",
            "import numpy as np\n\n\ndef accuracy(model):\n    return float(np.mean(model.predict(X_test) == y_test))\n",
            inputs={"logreg": "train_logreg", "tree": "train_tree", "X_test": "process", "y_test": "process"},
            outputs=("logreg_accuracy", "tree_accuracy", "n_test"),
            metrics=("logreg_accuracy", "tree_accuracy", "n_test"),
            modules=("numpy",),
        ),
    )
    parameters = {
        "test_size": Parameter("test_size", 0.25, "float"),
        "seed": Parameter("seed", 0, "int"),
        "C": Parameter("C", 1.0, "float"),
        "depth": Parameter("depth", 6, "int"),
    }
    return PipelinePlan(
        "digits", steps, parameters, ("logreg_accuracy", "tree_accuracy", "n_test"), notebook="digits.ipynb"
    )


def run_directly(plan: PipelinePlan, overrides: dict, store) -> dict:
    """The same cells, in order, through nbmagic's step runtime and marshaller (what our local runner does)."""
    params = plan.resolve_parameters(overrides)
    saved: dict[str, object] = {}
    metrics: dict[str, object] = {}
    for step in plan.steps:
        values = {name: params[name] for name in step.parameters}
        values.update({var: marshal.load(saved[var]) for var in step.inputs})
        result = execute(step.name, step.cell.code, step.cell.label, values, step.writes, prelude=step.prelude)
        for var in step.outputs:
            directory = store / f"{step.name}-{var}"
            directory.mkdir()
            marshal.save(result[var], directory, var)
            saved[var] = directory
        metrics.update({name: result[name] for name in step.metrics})
    return metrics


@pytest.fixture
def kfp_local(tmp_path):
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"), raise_on_error=False
    )
    return local


def test_compiled_yaml_runs_unchanged_on_kfp_local_with_the_direct_runs_metrics(tmp_path, kfp_local):
    from kfp import components

    plan = digits_plan()
    compile_pipeline(plan, output=tmp_path / "digits.yaml")
    pipeline = components.load_component_from_file(str(tmp_path / "digits.yaml"))
    overrides = {"C": 0.5, "depth": 4}
    task = pipeline(**overrides)
    from_kfp = metrics_from_outputs(plan, task)

    store = tmp_path / "direct"
    store.mkdir()
    direct = run_directly(plan, overrides, store)
    assert set(from_kfp) == set(direct) == {"logreg_accuracy", "tree_accuracy", "n_test"}
    for name, value in direct.items():
        assert from_kfp[name] == value, name  # exact: same code, same data, same seeds
    assert 0.8 < direct["logreg_accuracy"] <= 1.0
    assert direct["n_test"] == 450
    # values crossed the edges as typed artifacts written by nbmagic's marshaller (arrays as npy, models as joblib)
    (load_output,) = (tmp_path / "kfp-root").glob("digits-*/load/executor_output.json")
    x_meta = json.loads(load_output.read_text())["artifacts"]["out_X"]["artifacts"][0]["metadata"]
    assert (x_meta["type"], x_meta["format"]) == ("numpy.ndarray", "npy")
    (train_output,) = (tmp_path / "kfp-root").glob("digits-*/train-logreg/executor_output.json")
    model_meta = json.loads(train_output.read_text())["artifacts"]["out_logreg"]["artifacts"][0]["metadata"]
    assert model_meta["format"] == "joblib"


def test_a_failing_step_reports_the_notebook_cell_not_generated_code(tmp_path, kfp_local, capfd):
    from kfp import components

    cell = Cell(source="y = helper(x)\n", code="total = 0\ny = helper(x)\n", index=7, label="broken.ipynb cell 7")
    step = StepPlan(
        "boom", cell, {}, ("x",), ("total", "y"), ("y",), ("y",), "def helper(v):\n    return 1 / v\n", (), (), ()
    )
    plan = PipelinePlan("broken", (step,), {"x": Parameter("x", 0, "int")}, ("y",))
    text = compile_pipeline(plan)
    task = components.load_component_from_text(text)()
    captured = capfd.readouterr()
    log = captured.out + captured.err
    assert not task.outputs  # the pipeline failed: no metrics
    assert 'File "broken.ipynb cell 7", line 3, in <module>' in log  # line 1 is the %%step line
    assert "return 1 / v" in log
    assert "ZeroDivisionError: division by zero" in log
    assert "nbmagic: step 'boom': ZeroDivisionError in broken.ipynb cell 7" in log
    traceback_part = log[log.index("Traceback (most recent call last)") :]
    assert "ephemeral_component.py" not in traceback_part.split("ZeroDivisionError")[0]


def test_ipython_syntax_in_a_step_runs_in_the_compiled_component(tmp_path, kfp_local):
    from kfp import components

    from nbmagic.pipeline.cells import RawCell, read_cells
    from nbmagic.pipeline.plan import build_plan

    cells = [
        "%%step shell\n%time squares = [i * i for i in range(4)]\nlisting = !echo hello\nn = len(listing) + sum(squares)\n",
        "%pipeline_metrics n\n",
    ]
    plan = build_plan(read_cells([RawCell(c, i, f"cell {i}") for i, c in enumerate(cells, start=1)]))
    text = compile_pipeline(plan)
    assert "ipython==" in text  # the shell the magics need is installed with the step
    task = components.load_component_from_text(text)()
    assert metrics_from_outputs(plan, task) == {"n": 15}
