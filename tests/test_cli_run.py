"""Review findings: `nbmagic run` runs a notebook where Jupyter would, in the notebook's folder."""

from __future__ import annotations

import subprocess
import sys

import nbformat


def test_run_uses_the_notebook_folder_for_relative_files_and_local_modules(tmp_path):
    folder = tmp_path / "project" / "notebooks"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("7")
    (folder / "helpers_cli_review.py").write_text("def double(v):\n    return 2 * v\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from helpers_cli_review import double"),
        nbformat.v4.new_code_cell("%%step load\nraw = float(open('data.txt').read())"),
        nbformat.v4.new_code_cell("%%step score\nvalue = double(raw)"),
        nbformat.v4.new_code_cell("%pipeline_metrics value"),
    ]
    path = folder / "train.ipynb"
    nbformat.write(notebook, str(path))
    result = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "run", "project/notebooks/train.ipynb"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "value=14" in result.stdout
