"""The magics in IPython's InteractiveShell: recording, running like normal cells, errors, loading."""

from __future__ import annotations

from IPython.core.error import UsageError

from helpers.shell import run_cell
from nbmagic.magics.state import current_plan, kernel_state


def recorded_steps(ip):
    return [s.name for s in current_plan(ip).steps]


def test_step_records_and_runs_like_a_normal_cell(ip, capsys):
    result = run_cell(ip, "%%step load\nx = 21\nprint('hello from load')\nx * 2")
    assert result.success
    assert ip.user_ns["x"] == 21 and ip.user_ns["_"] == 42
    out = capsys.readouterr().out
    assert "hello from load" in out and ": 42" in out  # the last expression is displayed
    assert recorded_steps(ip) == ["load"]


def test_rerunning_a_step_updates_it(ip):
    run_cell(ip, "%%step load\nx = 1")
    run_cell(ip, "%%step load\nx = 2\ny = 3")
    plan = current_plan(ip)
    assert [s.name for s in plan.steps] == ["load"]
    assert plan.step("load").writes == ("x", "y")


def test_a_failing_step_fails_its_cell_but_stays_recorded(ip):
    result = run_cell(ip, "%%step boom\nraise ValueError('bad data')")
    assert not result.success
    assert isinstance(result.error_in_exec.original, ValueError)
    assert recorded_steps(ip) == ["boom"]


def test_usage_errors_leave_the_recording_unchanged(ip):
    run_cell(ip, "%%step load\nx = 1")
    for bad in (
        "%%step 9lives\nnever_set = 1",
        "%%step load2 --memory 2GG\nnever_set = 1",
        "%%step load2 --nope\nnever_set = 1",
    ):
        result = run_cell(ip, bad)
        assert isinstance(result.error_in_exec, UsageError), bad
        assert "\n" not in str(result.error_in_exec)
    assert recorded_steps(ip) == ["load"]
    assert "never_set" not in ip.user_ns


def test_parameters_are_recorded_and_run(ip):
    result = run_cell(ip, "%%pipeline_parameters\nlr = 0.1\nname = 'svm'")
    assert result.success and ip.user_ns["lr"] == 0.1
    run_cell(ip, "%%step train\nscore = lr * 2")
    run_cell(ip, "%pipeline_metrics score")
    plan = current_plan(ip)
    assert plan.parameters["lr"].type == "float" and plan.parameters["name"].default == "svm"
    assert plan.metrics == ("score",)
    bad = run_cell(ip, "%%pipeline_parameters\nlr = 0.2\nepochs = compute()")
    assert isinstance(bad.error_in_exec, UsageError)
    assert "line 3" in str(bad.error_in_exec) and "epochs" in str(bad.error_in_exec)
    assert current_plan(ip).parameters["lr"].default == 0.1  # unchanged


def test_notebook_functions_and_imports_reach_steps(ip):
    run_cell(ip, "import math\ndef area(r):\n    return math.pi * r ** 2")
    run_cell(ip, "%%step compute\nresult = area(2)")
    step = current_plan(ip).step("compute")
    assert "import math" in step.prelude and "def area" in step.prelude


def test_help_is_the_manual(ip):
    doc = ip.find_cell_magic("step").__doc__
    assert "--after" in doc and "--memory" in doc and "Record this cell" in doc
    assert "--param" in ip.find_line_magic("compile_run").__doc__


def test_compile_run_bad_parameter_is_a_usage_error_before_anything_runs(ip):
    run_cell(ip, "%%pipeline_parameters\nepochs = 3")
    run_cell(ip, "%%step train\nn = epochs")
    result = run_cell(ip, "%compile_run --param epochs=lots")
    assert isinstance(result.error_in_exec, UsageError)
    assert "parameter 'epochs' is int" in str(result.error_in_exec)
    from nbmagic.store.runs import RunStore

    assert RunStore().list_runs() == []


def test_pipeline_shows_steps_edges_parameters_and_a_picture(ip):
    run_cell(ip, "%%pipeline_parameters\nk = 2")
    run_cell(ip, "%%step a\nx = k")
    run_cell(ip, "%%step b\ny = x + 1")
    view = ip.run_line_magic("pipeline", "")
    text = repr(view)
    assert "a -> b: x  [inferred]" in text and "k: int = 2" in text
    assert view._repr_html_().startswith("<div><svg")


def test_unload_removes_every_magic_and_reload_restores_them(ip):
    names = ("step", "pipeline_parameters")
    ip.extension_manager.unload_extension("nbmagic")
    assert all(ip.find_cell_magic(n) is None for n in names)
    assert ip.find_line_magic("compile_run") is None
    ip.extension_manager.load_extension("nbmagic")
    ip.run_line_magic("reload_ext", "nbmagic")
    assert all(ip.find_cell_magic(n) is not None for n in names)
    state = kernel_state(ip)
    assert ip.events.callbacks["post_run_cell"].count(state.post_run_cell) == 1


def test_renamed_step_with_the_same_cell_id_leaves_no_stale_step(ip):
    ip.run_cell("%%step old_name\nx = 1", store_history=True, cell_id="cell-1")
    ip.run_cell("%%step new_name\nx = 1", store_history=True, cell_id="cell-1")
    assert recorded_steps(ip) == ["new_name"]


def test_a_trailing_comment_on_a_magic_line_is_ignored(ip):
    run_cell(ip, "%%step counted  # the counting step\nn = 3")
    assert recorded_steps(ip) == ["counted"]
    result = run_cell(ip, "%pipeline  # what is recorded")
    assert result.success, result.error_in_exec
    from nbmagic.arguments import strip_comment

    assert strip_comment("--param name='a # b'  # note") == "--param name='a # b'"
    assert strip_comment("--param tag=x#1") == "--param tag=x#1"


def test_pipeline_config_sets_defaults_and_a_bad_one_is_not_recorded(ip):
    run_cell(ip, "%pipeline_config --retries 2 --env A=1")
    run_cell(ip, "%%step s --env B=2\nx = 1")
    plan = current_plan(ip)
    assert plan.defaults.retries == 2
    bad = run_cell(ip, "%pipeline_config --memory 2GG")
    assert isinstance(bad.error_in_exec, UsageError) and "--memory" in str(bad.error_in_exec)
    assert current_plan(ip).defaults.retries == 2  # the refused line changed nothing
