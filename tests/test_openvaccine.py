"""The seed's example, examples/openvaccine.ipynb, end to end on a real kernel: pipeline, tuning, restore, serving."""

from __future__ import annotations

import ast
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
from nbclient import NotebookClient

from nbmagic.errors import PipelineError
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "openvaccine.ipynb"


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
        parts.append("\n".join(output.get("traceback", [])))
    return "\n".join(parts)


def cell_starting(nb, prefix: str, exact: bool = False) -> str:
    """The outputs of the one code cell whose source starts with ``prefix`` (or is ``prefix``)."""
    found = [
        c
        for c in nb.cells
        if c.cell_type == "code" and (c.source.strip() == prefix if exact else c.source.startswith(prefix))
    ]
    assert len(found) == 1, f"expected one cell starting with {prefix!r}, found {len(found)}"
    return text_of(found[0])


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run the whole notebook once on a real ipykernel (its own run store), return (notebook, directory)."""
    directory = tmp_path_factory.mktemp("openvaccine")
    path = directory / "openvaccine.ipynb"
    shutil.copy(NOTEBOOK, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NBMAGIC_HOME", str(directory / "home"))
        patch.setenv("JPY_SESSION_NAME", str(path))
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(directory)}}
        ).execute()
    return nb, directory


def test_the_pipeline_records_the_seed_steps_and_runs(executed):
    nb, _ = executed
    assert "300 sequences of 68 bases" in cell_starting(nb, "%%step load_data")
    assert "train (16320, 84), validation (4080, 84)" in cell_starting(nb, "%%step process")
    shown = cell_starting(nb, "%pipeline", exact=True)
    for edge in ("load_data -> process: data", "process -> train: X_train, y_train", "train -> evaluate: model"):
        assert edge in shown
    assert "learning_rate: float = 0.003" in shown and "hidden: int = 32" in shown
    metrics = ast.literal_eval(cell_starting(nb, "run = %compile_run").strip().splitlines()[-1])
    assert set(metrics) == {"val_loss", "baseline_loss"}
    # the noise in the formula puts a floor of ~0.05 under the loss; predicting the mean is ~0.31
    assert 0.045 < metrics["val_loss"] < 0.1 and 0.25 < metrics["baseline_loss"] < 0.4


def test_tuning_runs_six_trials_reusing_the_cached_upstream_steps(executed):
    nb, _ = executed
    listing = cell_starting(nb, 'print(f"experiment')
    assert "experiment succeeded: 6 trials" in listing
    trials = re.findall(r"trial (\d+): (\w+)  val_loss ([\d.]+)  cached steps (\d+)  (\{.*\})", listing)
    assert [int(t[0]) for t in trials] == list(range(6))
    for _, status, loss, cached, parameters in trials:
        assert status == "succeeded" and 0.045 < float(loss) < 0.2
        assert cached == "2"  # load_data and process come from the cache in every trial
        values = ast.literal_eval(parameters)
        assert set(values) == {"learning_rate", "alpha", "hidden"} and values["hidden"] in (16, 32, 64)
        assert 0.001 <= values["learning_rate"] <= 0.03 and 1e-5 <= values["alpha"] <= 0.01
    best = float(re.search(r"objective=([\d.e-]+)", cell_starting(nb, "exp = %katib")).group(1))
    assert (
        f"{best:.4f}" == f"{min(float(t[2]) for t in trials):.4f}"
    )  # val_loss is minimised: exp.best is the lowest trial


def test_restore_best_brings_the_best_trials_model_back(executed):
    nb, _ = executed
    best_run = re.search(r"run_id='([\w-]+)'", cell_starting(nb, "exp = %katib")).group(1)
    report = cell_starting(nb, "%restore best")
    assert f"from run {best_run}, state after step evaluate" in report
    assert re.search(r"^\s*model\s+sklearn\.neural_network\.\S*MLPRegressor", report, re.M), report
    check = cell_starting(nb, "restored_loss")
    assert "same: True" in check
    assert "hidden 16" in check or "hidden 32" in check or "hidden 64" in check


def test_serving_predicts_on_raw_sequences_then_stops(executed):
    nb, _ = executed
    started = cell_starting(nb, "server = %serve")
    url = re.search(r"<Server model (http://127\.0\.0\.1:\d+) running>", started)
    assert url, started
    predicted = cell_starting(nb, "rng = np.random.default_rng(2024)")
    assert "predictions (108, 3) same as in the kernel: True" in predicted
    assert "[(68, 3), (40, 3)]" in predicted
    assert cell_starting(nb, "server.stop()").strip() == "'stopped'"
    port = urlparse(url.group(1)).port
    with socket.socket() as probe:  # nothing listens there any more (the kernel has exited too)
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def plan_of(*sources: str):
    return build_plan(read_cells([RawCell(s, i, f"cell {i}") for i, s in enumerate(sources, start=1)]))


def test_a_notebook_function_may_read_a_name_its_calling_step_assigns():
    """The seed's `process` step builds `tokenizer`, then calls `process_features`, which reads it."""
    plan = plan_of(
        "def featurize(rows):\n    return [tokenizer[c] for c in rows]\n",
        "%%step load\ntext = 'abc'\n",
        "%%step process\ntokenizer = {c: i for i, c in enumerate(sorted(set(text)))}\nX = featurize(text)\n",
    )
    process = plan.step("process")
    assert process.inputs == {"text": "load"} and "def featurize" in process.prelude
    with pytest.raises(PipelineError, match="step 'process' uses variable 'tokenizer'"):
        plan_of(
            "def featurize(rows):\n    return [tokenizer[c] for c in rows]\n",
            "%%step load\ntext = 'abc'\n",
            "%%step process\nX = featurize(text)\n",
        )
