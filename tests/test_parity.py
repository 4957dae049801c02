"""The quickstart notebook, compiled: the YAML runs unchanged on kfp.local and gives our local runner's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.kfp_outputs import metrics_from_outputs
from nbmagic.compile.kfp import compile_pipeline
from nbmagic.pipeline.cells import read_cells
from nbmagic.pipeline.notebook import read_notebook
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_kfp_local_and_the_local_runner_give_the_same_metrics(tmp_path):
    from kfp import components, local

    plan = build_plan(read_cells(read_notebook(QUICKSTART)), notebook_path=str(QUICKSTART))
    overrides = {"C": 0.5, "n_estimators": 20}
    ours = LocalRunner().run(plan, overrides)
    assert ours.status == "done"

    compile_pipeline(plan, output=tmp_path / "quickstart.yaml")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    task = components.load_component_from_file(str(tmp_path / "quickstart.yaml"))(**overrides)
    theirs = metrics_from_outputs(plan, task)

    assert set(theirs) == set(ours.metrics) == {"accuracy", "svm_accuracy", "forest_accuracy"}
    for name, value in ours.metrics.items():
        assert theirs[name] == value, name  # exact: same code, data and seeds
