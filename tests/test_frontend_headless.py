"""Headless runs (papermill, nbconvert): %katib is waited for, and the saved outputs read well as text."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.slow

CELLS = [
    "%load_ext nbmagic",
    "%%pipeline_parameters\nlr = 0.1",
    "%%step fit\nscore = -(lr - 0.3) ** 2",
    "%pipeline_metrics score",
    'exp = %katib --param "lr=double(0.01,1)" --max-trials 3 --name headless',  # no --wait
    "run = %compile_run\nprint('STEPS', {n: s.status for n, s in run.steps.items()})",
]


def outputs_text(cell) -> str:
    return "\n".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in cell.outputs)


def test_papermill_waits_for_katib_and_saves_the_final_view_with_a_text_form(tmp_path: Path):
    import papermill

    source, done = tmp_path / "tune.ipynb", tmp_path / "tune-out.ipynb"
    notebook = new_notebook(cells=[new_code_cell(c) for c in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, source)
    papermill.execute_notebook(str(source), str(done), kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    saved = nbformat.read(done, as_version=4)

    tune = saved.cells[4]
    view = next(o for o in tune.outputs if "text/html" in o.get("data", {}))
    assert "succeeded, 3/3 finished" in view["data"]["text/plain"], view["data"]["text/plain"]
    assert 'data-status="succeeded"' in view["data"]["text/html"]  # the final view, not frozen at "running"
    assert "best: trial" in view["data"]["text/plain"]
    assert "STEPS {'fit': 'done'}" in outputs_text(saved.cells[5])

    from nbconvert import LatexExporter, MarkdownExporter

    markdown, _ = MarkdownExporter().from_notebook_node(saved)
    assert "IPython.core.display.HTML object" not in markdown and 'data-status="succeeded"' in markdown
    latex, _ = LatexExporter().from_notebook_node(saved)  # PDF export: text/plain, not HTML
    assert "IPython.core.display.HTML object" not in latex
    assert "succeeded, 3/3 finished" in latex and "fit: done (" in latex
