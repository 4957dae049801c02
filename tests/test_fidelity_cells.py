"""Steps over several cells, warnings at the cell, a failed run that fails its cell, parameters as metrics."""

from __future__ import annotations

import pytest

from helpers.shell import run_cell, run_ok
from nbmagic.errors import PipelineError, RunFailed
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}", f"id{i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def test_cells_with_one_step_name_form_one_step_in_notebook_order():
    plan = plan_of("%%step build\nx = 1\n", "%%step other\nz = 0\n", "%%step build\ny = x + 1\n")
    build = plan.step("build")
    assert "x = 1" in build.cell.code and build.cell.code.index("x = 1") < build.cell.code.index("y = x + 1")
    assert build.writes == ("x", "y") and "cell 3" in build.cell.label


def test_settings_belong_on_the_first_cell_of_a_step():
    with pytest.raises(PipelineError, match="settings go on its first cell"):
        plan_of("%%step build --retries 2\nx = 1\n", "%%step build --retries 3\ny = x\n")


def test_a_parameter_declared_twice_names_both_cells():
    with pytest.raises(PipelineError, match=r"'lr' is declared twice, as float and int \(cell 1 and cell 2\)"):
        plan_of("%%pipeline_parameters\nlr = 0.1\n", "%%pipeline_parameters\nlr = 1\n", "%%step a\nx = lr\n")


def test_a_parameter_can_be_a_metric():
    plan = plan_of("%%pipeline_parameters\nd1 = 5\n", "%%step a\nx = 1\n", "%pipeline_metrics x d1\n")
    assert plan.step("a").metrics == ("x", "d1") and "d1" in plan.step("a").parameters


def test_carried_code_is_shown_per_step():
    plan = plan_of("import os\nBASE = os.path.join('a', 'b')\nunused = 3\n", "%%step a\nn = len(BASE)\n")
    assert plan.step("a").carried == (("cell 1", "BASE"),)
    assert "BASE = os.path.join('a', 'b')" in plan.step("a").prelude and "unused" not in plan.step("a").prelude


def test_without_cell_ids_a_second_cell_is_a_continuation_said_in_one_line(ip, capsys):
    run_ok(ip, "%%step build\nx = 1\n")
    run_ok(ip, "%%step build\ny = x + 1\n")
    assert "this cell is taken as part 2 of step 'build' (a continuation)" in capsys.readouterr().out
    run_ok(ip, "%%step build\ny = x + 2\n")  # an edited part 2: same first line? no: replaces nothing silently
    out = capsys.readouterr().out
    assert "part 3 of step 'build'" in out
    run_ok(ip, "%%step build\ny = x + 2\n")  # the same cell run again is the same part
    assert "part" not in capsys.readouterr().out


def test_warnings_at_the_cell(ip, capsys):
    run_ok(ip, "%%step empty\n# nothing yet\n")
    assert "nbmagic: warning: step 'empty' holds only comments" in capsys.readouterr().out
    run_ok(ip, "%%step later --after nowhere\nx = 1\n")
    assert "runs --after 'nowhere', which is not a step yet" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_compile_run_fails_its_cell_and_keeps_the_run(ip, capsys):
    import os

    run_ok(ip, f"%%pipeline_parameters\nhere = {os.getpid()}\n")
    run_ok(
        ip,
        "%%step boom\nimport os\nif os.getpid() != here:  # fails in the pipeline only\n    raise ValueError('bad row')\n",
    )
    result = run_cell(ip, "run = %compile_run --quiet")
    error = result.error_in_exec
    assert isinstance(error, RunFailed) and error.run.status == "failed"
    assert "step 'boom' failed: ValueError: bad row" in str(error)
    assert "ValueError: bad row" in capsys.readouterr().err  # the step's traceback, shown at the cell


@pytest.mark.slow
def test_papermill_stops_at_a_failed_run(tmp_path, monkeypatch):
    import os

    import papermill

    from helpers.fidelity import ROOT, write_notebook

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    path = write_notebook(
        tmp_path / "fails.ipynb",
        [
            "%load_ext nbmagic",
            "%%step boom\nimport sys\nif 'ipykernel' not in sys.modules:  # fails in the pipeline only\n"
            "    raise ValueError('bad row')\n",
            "run = %compile_run",
            "open('after.txt', 'w').write('ran')",
        ],
    )
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(str(path), str(tmp_path / "out.ipynb"), kernel_name="python3", cwd=str(tmp_path))
    assert caught.value.ename == "RunFailed" and "step 'boom' failed: ValueError: bad row" in caught.value.evalue
    assert not (tmp_path / "after.txt").exists()


def test_pipeline_text_says_what_each_step_carries_and_changes_in_place():
    from nbmagic.pipeline.render import plan_text

    plan = plan_of(
        "BASES = 'ACGU'\n",
        "%%step load\nrows = [1]\n",
        "%%step grow\nrows.append(len(BASES))\n",
        "%%step use\nn = len(rows)\n",
    )
    text = plan_text(plan)
    assert "    carries: cell 1: BASES" in text and "    changes in place: rows" in text


def test_passing_a_parameter_to_a_function_does_not_replace_it():
    plan = plan_of(
        "%%pipeline_parameters\nlr = 0.1\n",
        "def fit(rate):\n    return rate * 2\n",
        "%%step a\nfit(lr)\nx = 1\n",
        "%%step b\ny = lr + x\n",
    )
    assert "lr" not in plan.step("a").writes and plan.step("b").parameters == ("lr",)


def test_modules_a_step_imports_are_not_stored():
    from nbmagic.run.local import LocalRunner

    plan = plan_of("%%step draw\nimport json\nimport os.path as osp\nn = len(json.dumps(osp.sep))\n")
    run = LocalRunner(workers=1).run(plan)
    assert run.status == "done"
    assert set(run.steps["draw"].outputs) == {"n"} and run.steps["draw"].not_kept == {}
