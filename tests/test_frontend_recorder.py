"""Matching what the kernel ran to the notebook file's cells when the ids differ (VS Code) or are missing."""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbmagic.errors import PipelineError
from nbmagic.pipeline.notebook import vscode_notebook
from nbmagic.pipeline.plan import build_plan
from nbmagic.pipeline.recorder import Recorder

CELLS = ["import math", "%%step load\nx = 1", "%%step scale\ny = x * 2", "%%step total\ns = y + 1"]


def uri(path, handle: int) -> str:
    return f"vscode-notebook-cell:{path}#W{handle}sZmlsZQ%3D%3D"


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "demo.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in CELLS]), path)
    past = time.time() - 60
    os.utime(path, (past, past))  # saved before anything below ran
    return path


def steps(recorder: Recorder, path) -> list[tuple[str, str]]:
    plan = build_plan(recorder.notebook(path))
    return [(s.name, s.cell.source.strip()) for s in plan.steps]


def test_run_all_with_editor_uris_adds_no_unsaved_copies(saved):
    recorder = Recorder()
    for _ in range(2):
        for handle, source in enumerate(CELLS):
            recorder.record(source, uri(saved, handle))
    assert [name for name, _ in steps(recorder, saved)] == ["load", "scale", "total"]
    assert recorder.notes == []


def test_an_edited_code_cell_replaces_its_file_version_through_its_earlier_source(saved):
    recorder = Recorder()
    for handle, source in enumerate(CELLS):
        recorder.record(source, uri(saved, handle))
    recorder.record("%%step scale\ny = x * 3", uri(saved, 2))
    recorder.record("%%step rescaled\ny = x * 4", uri(saved, 2))  # renamed, still the same cell
    assert steps(recorder, saved) == [("load", "x = 1"), ("rescaled", "y = x * 4"), ("total", "s = y + 1")]


def test_a_cell_edited_before_it_ever_ran_is_placed_by_position(saved):
    recorder = Recorder()
    edited = ["import math", "%%step load\nx = 1", "%%step double\ny = x * 2", "%%step total\ns = y + 1"]
    for handle, source in enumerate(edited):
        recorder.record(source, uri(saved, handle))
    assert [name for name, _ in steps(recorder, saved)] == ["load", "double", "total"]


def test_an_unsaved_step_cell_is_placed_after_the_cell_that_ran_before_it_with_a_note(saved):
    recorder = Recorder()
    for handle, source in enumerate(CELLS):
        recorder.record(source, uri(saved, handle))
    recorder.record(CELLS[2], uri(saved, 2))
    recorder.record("%%step shift\ny = y + 1", uri(saved, 9))
    assert [name for name, _ in steps(recorder, saved)] == ["load", "scale", "shift", "total"]
    assert len(recorder.notes) == 1 and "(step shift) is not saved yet" in recorder.notes[0]


def test_cells_without_ids_still_match_by_source_and_step_name(saved):
    recorder = Recorder()
    recorder.record("%%step load\nx = 10")
    assert steps(recorder, saved)[0] == ("load", "x = 10")


def test_the_notebook_path_inside_vscode_cell_ids(tmp_path):
    path = tmp_path / "my notebook.ipynb"
    cell = "vscode-notebook-cell:" + str(path).replace(" ", "%20") + "#W0sZmlsZQ%3D%3D"
    assert vscode_notebook(["some-other-id", cell]) == path
    assert vscode_notebook(["vscode-notebook-cell:/c%3A/Users/me/n.ipynb#X1s"]).as_posix() == "c:/Users/me/n.ipynb"
    assert vscode_notebook(["1f2e3d"]) is None


def test_no_steps_recorded_names_the_notebook_option():
    with pytest.raises(PipelineError, match="--notebook PATH"):
        build_plan(Recorder().notebook(None))
