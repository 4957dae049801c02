"""Notebooks on a real ipykernel through nbclient: the quickstart end to end, restart, rename."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def text_of(cell) -> str:
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
        parts.append(str(output.get("data", {}).get("text/html", "")))
        parts.append("\n".join(output.get("traceback", [])))
    return "\n".join(parts)


def client_for(path: Path, monkeypatch) -> tuple[NotebookClient, nbformat.NotebookNode]:
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    nb = nbformat.read(path, as_version=4)
    return NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ), nb


def run_in_fresh_kernel(path: Path, cells: list, indexes: tuple[int, ...], monkeypatch) -> nbformat.NotebookNode:
    """Save ``cells`` as the notebook at ``path``, then run only the cells at ``indexes`` in a new kernel."""
    nbformat.write(new_notebook(cells=cells), path)
    client, nb = client_for(path, monkeypatch)
    with client.setup_kernel():
        for index in indexes:
            client.execute_cell(nb.cells[index], index)
    return nb


def test_quickstart_runs_end_to_end_on_a_real_kernel(tmp_path, monkeypatch):
    path = tmp_path / "quickstart.ipynb"
    shutil.copy(EXAMPLES / "quickstart.ipynb", path)
    client, nb = client_for(path, monkeypatch)
    client.execute()
    outputs = {i: text_of(c) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    everything = "\n".join(outputs.values())
    assert "load_data -> process: X, y  [inferred]" in everything
    assert "train_svm -> evaluate: svm  [inferred]" in everything
    metrics_cell = next(t for t in outputs.values() if "'svm_accuracy'" in t)
    assert "'accuracy': 0.9" in metrics_cell
    rerun = next(t for t in outputs.values() if "'train_svm': 'done'" in t)
    assert "'load_data': 'cached'" in rerun and "'train_forest': 'cached'" in rerun and "'evaluate': 'done'" in rerun
    compiled = (tmp_path / "quickstart.yaml").read_text()
    assert "pipelineInfo" in compiled and "train-svm" in compiled


def test_restart_then_compile_run_reads_unexecuted_steps_from_the_file(tmp_path, monkeypatch):
    path = tmp_path / "restart.ipynb"
    cells = [
        new_code_cell("%load_ext nbmagic"),
        new_code_cell("%%pipeline_parameters\nn = 4"),
        new_code_cell("%%step make\nvalues = list(range(n))"),
        new_code_cell("%%step total\ns = sum(values)"),
        new_code_cell("%pipeline_metrics s"),
        new_code_cell("run = %compile_run --quiet\nprint('metrics', run.metrics, run.status)"),
    ]
    # a fresh kernel: load the extension, then run — no step cell executed
    nb = run_in_fresh_kernel(path, cells, (0, 5), monkeypatch)
    assert "metrics {'s': 6.0} done" in text_of(nb.cells[5])


def test_a_renamed_and_saved_step_leaves_no_stale_step(tmp_path, monkeypatch):
    path = tmp_path / "rename.ipynb"
    nb = new_notebook(
        cells=[new_code_cell("%load_ext nbmagic"), new_code_cell("%%step old_name\nx = 1"), new_code_cell("%pipeline")]
    )
    nbformat.write(nb, path)
    client, nb = client_for(path, monkeypatch)
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.execute_cell(nb.cells[1], 1)
        client.execute_cell(nb.cells[2], 2)
        assert "old_name" in text_of(nb.cells[2])
        import time

        time.sleep(0.05)
        saved = nbformat.read(path, as_version=4)
        saved.cells[1].source = "%%step new_name\nx = 1"
        nbformat.write(saved, path)
        client.execute_cell(nb.cells[2], 2)
    shown = text_of(nb.cells[2])
    assert "new_name" in shown and "old_name" not in shown


def test_usage_error_fails_the_cell_with_one_line(tmp_path, monkeypatch):
    path = tmp_path / "bad.ipynb"
    nbformat.write(
        new_notebook(
            cells=[
                new_code_cell("%load_ext nbmagic"),
                new_code_cell("%%step a --after ghost\nx = 1"),
                new_code_cell("%compile_run"),
            ]
        ),
        path,
    )
    client, nb = client_for(path, monkeypatch)
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        client.execute_cell(nb.cells[1], 1)
        with pytest.raises(Exception) as caught:
            client.execute_cell(nb.cells[2], 2)
    assert "UsageError" in str(caught.value)
    assert "step 'a': --after names unknown step 'ghost'" in str(caught.value)


def test_pipeline_config_in_the_file_applies_after_a_restart(tmp_path, monkeypatch):
    path = tmp_path / "config.ipynb"
    cells = [
        new_code_cell("%load_ext nbmagic"),
        new_code_cell("%pipeline_config --env MODE=from-config"),
        new_code_cell("%%step read\nimport os\nmode = os.environ.get('MODE', 'unset')"),
        new_code_cell("run = %compile_run --quiet\nprint('mode', run.value('mode'))"),
    ]
    nb = run_in_fresh_kernel(path, cells, (0, 3), monkeypatch)  # neither the config cell nor the step ran here
    assert "mode from-config" in text_of(nb.cells[3])
