"""VS Code's Jupyter extension, simulated on jupyter_client: cell ids are ``vscode-notebook-cell:`` URIs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers.vscode_sim import VSCodeNotebook

pytestmark = pytest.mark.slow

CELLS = [
    "%load_ext nbmagic",
    "%%pipeline_parameters\nfactor = 2",
    "%%step load\nx = [1, 2, 3]",
    "%%step scale\ny = [v * factor for v in x]",
    "%%step total\ns = float(sum(y))",
    "%pipeline_metrics s",
]
SHOW = (
    "import json\nfrom nbmagic.magics.state import current_plan\n"
    "_p = current_plan(get_ipython())\n"
    "print(json.dumps([[s.name, s.cell.source.strip(), sorted(s.upstream)] for s in _p.steps]))"
)
RUN = "run = %compile_run --quiet\nprint('RESULT', run.status, run.metrics)"


@pytest.fixture
def notebook_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in CELLS]), path)
    return path


@pytest.fixture
def editor(notebook_file: Path):
    sim = VSCodeNotebook(notebook_file)
    yield sim
    sim.close()


def steps(sim: VSCodeNotebook) -> list[list]:
    out = sim.inspect(SHOW)
    return json.loads(out.strip().splitlines()[-1])


def test_run_all_then_compile_run_gives_the_notebook_pipeline(editor):
    outputs = editor.run_all()
    assert not any("Error" in o for o in outputs), outputs
    assert [s[0] for s in steps(editor)] == ["load", "scale", "total"]
    result = editor.execute(RUN)
    assert "RESULT done {'s': 12.0}" in result, result


def test_run_all_twice_and_rerunning_one_cell_add_nothing(editor):
    editor.run_all()
    editor.run_all()
    editor.run(3)
    assert [s[0] for s in steps(editor)] == ["load", "scale", "total"]


def test_edit_and_rerun_without_saving_uses_the_edited_cell(editor):
    editor.run_all()
    editor.edit(3, "%%step scale\ny = [v * factor * 10 for v in x]")
    editor.run(3)
    assert steps(editor)[1][1].endswith("factor * 10 for v in x]")
    assert "RESULT done {'s': 120.0}" in editor.execute(RUN)


def test_a_step_renamed_without_saving_leaves_no_stale_step(editor):
    editor.run_all()
    editor.edit(3, "%%step scaled\ny = [v * factor for v in x]")
    editor.run(3)
    assert [s[0] for s in steps(editor)] == ["load", "scaled", "total"]
    assert "RESULT done {'s': 12.0}" in editor.execute(RUN)


def test_a_step_edited_before_it_first_ran_takes_its_place_in_the_file(editor):
    editor.edit(3, "%%step rescale\ny = [v * factor for v in x]")
    editor.run_all()
    assert [s[0] for s in steps(editor)] == ["load", "rescale", "total"]


def test_an_added_unsaved_cell_joins_after_the_cell_that_ran_before_it_and_says_so(editor):
    editor.run_all()
    editor.insert(4, "%%step shift\ny = [v + 1 for v in y]")
    editor.run(3)
    editor.run(4)  # Shift+Enter down the notebook: scale, then the new cell
    out = editor.execute("%pipeline")
    assert "unsaved cell [5] (step shift) is not saved yet; it is placed after demo.ipynb cell 4" in out, out
    plan = steps(editor)
    assert [s[0] for s in plan] == ["load", "scale", "shift", "total"]
    assert plan[3][2] == ["shift"]  # total reads y: the nearest earlier step that assigns it is shift
    editor.save()
    assert "not saved yet" not in editor.execute("%pipeline")
    assert [s[0] for s in steps(editor)] == ["load", "scale", "shift", "total"]


def test_a_deleted_and_saved_cell_leaves_the_pipeline(editor):
    editor.run_all()
    editor.delete(5)  # the metrics line and the step that produces it
    editor.delete(4)
    editor.save()
    assert [s[0] for s in steps(editor)] == ["load", "scale"]


def test_a_fresh_kernel_reads_unrun_steps_from_the_file(editor):
    editor.run(0)
    assert "RESULT done {'s': 12.0}" in editor.execute(RUN)


def test_a_remote_kernel_follows_kernel_order_and_says_how_to_give_the_file(notebook_file, tmp_path):
    sim = VSCodeNotebook(notebook_file, remote=True, client_path=Path("/home/someone/work/demo.ipynb"))
    try:
        for index in (0, 1, 2, 3):
            sim.run(index)
        out = sim.execute("%pipeline")
        assert "demo.ipynb is not on the kernel's machine" in out and "--notebook PATH" in out, out
        assert [s[0] for s in steps(sim)] == ["load", "scale"]  # kernel order: only what ran
        sim.execute(f"%pipeline --notebook {notebook_file}")
        assert [s[0] for s in steps(sim)] == ["load", "scale", "total"]
    finally:
        sim.close()
