"""The README's notebook example runs as written, on a real kernel."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## In a notebook") :]
    section = section[: section.index("\n## ", 3)]
    cells = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(cells) >= 6
    checks = (
        "assert run.status == 'done', run.error\nassert 0.5 < run.metrics['accuracy'] <= 1\n"
        "assert run.steps['load_data'].status == 'cached' and run.steps['train'].status == 'done'"
    )
    path = tmp_path / "readme.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells] + [new_code_cell(checks)]), path)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
