"""Restart and Run All on a real ipykernel (nbclient) with %pipeline_config --reuse: nothing recomputed."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook


def _cells(factor: float) -> list:
    return [
        new_code_cell("%load_ext nbmagic"),
        new_code_cell("%pipeline_config --reuse"),
        new_code_cell(f"%%pipeline_parameters\nfactor = {factor}\nmarker = 'ran.txt'"),
        new_code_cell(
            "%%step load\nimport numpy as np\nopen(marker, 'a').write('load ')\n"
            "data = np.arange(100_000.0)\nprint('loaded', len(data))"
        ),
        new_code_cell("%%step transform\nopen(marker, 'a').write('transform ')\nscaled = data * factor"),
        new_code_cell("%%step summary\ntotal = float(scaled.sum())\nprint('total', total)"),
        new_code_cell("run = %compile_run --quiet\nprint('STATUS', {n: s.status for n, s in run.steps.items()})"),
    ]


def _run_all(folder, factor: float, monkeypatch) -> list[str]:
    """A new kernel runs every cell of the saved notebook; returns each cell's printed text."""
    path = folder / "reuse.ipynb"
    nb = new_notebook(cells=_cells(factor))
    nbformat.write(nb, path)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]


def _ran(folder) -> list[str]:
    marker = folder / "ran.txt"
    words = marker.read_text().split() if marker.exists() else []
    marker.write_text("")
    return words


@pytest.mark.slow
def test_restart_and_run_all_reuses_the_store_in_a_real_kernel(tmp_path, monkeypatch):
    first = _run_all(tmp_path, 2.0, monkeypatch)
    assert _ran(tmp_path) == ["load", "transform"]
    assert "STATUS {'load': 'cached', 'transform': 'cached', 'summary': 'cached'}" in first[6]

    again = _run_all(tmp_path, 2.0, monkeypatch)
    assert _ran(tmp_path) == []
    assert again[3].startswith("loaded 100000\nload: reused from run ")
    assert "summary: reused from run " in again[5]
    assert first[5].splitlines()[0] == again[5].splitlines()[0]  # the same total

    changed = _run_all(tmp_path, 3.0, monkeypatch)
    assert _ran(tmp_path) == ["transform"]
    assert "load: reused from run " in changed[3] and "reused" not in changed[4]
    assert f"total {float(sum(range(100_000)) * 3.0)}" in changed[5]
    assert "STATUS {'load': 'cached', 'transform': 'cached', 'summary': 'cached'}" in changed[6]
