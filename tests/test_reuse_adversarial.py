"""Reuse as a user breaks it: what a full Run All would give, or the cell runs."""

from __future__ import annotations

from helpers.reuse_cells import run_again
from helpers.shell import run_ok

S = "%%step s\na = []\nb = a\n"
T = "%%step t\na.append(1)\nn = len(b)\n"


def test_two_names_for_one_object_are_one_object_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    assert "s: reused from run" in run_again(ip, capsys, S, "a", "b")
    run_ok(ip, T)  # as in a full Run All: appending to a is appending to b
    assert ip.user_ns["n"] == 1
    assert ip.user_ns["a"] is ip.user_ns["b"]


def test_a_name_bound_to_a_value_the_step_reads_is_that_value_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step load\nrows = [1, 2]\n")
    assert "alias: reused from run" in run_again(ip, capsys, "%%step alias\nsame = rows\nk = 1\n", "same")
    assert ip.user_ns["same"] is ip.user_ns["rows"]


def test_two_values_holding_one_object_where_neither_holds_the_other_make_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step s\na = []\nb = [a]\nc = {'k': a}\n")
    assert "s: cannot be reused next time ('c' and 'b' hold a shared object" in capsys.readouterr().out


def test_names_bound_to_one_immutable_value_are_still_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nx = y = 7\nname = label = 'a'\npair = other = (1, 2)\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "x", "y", "name", "label", "pair", "other")
    assert (ip.user_ns["x"], ip.user_ns["label"], ip.user_ns["other"]) == (7, "a", (1, 2))


def test_a_local_module_edited_after_the_kernel_imported_it_is_not_reused_nor_stored(ip, tmp_path, monkeypatch, capsys):
    import importlib
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "helper_mod15", raising=False)
    source = tmp_path / "helper_mod15.py"
    source.write_text("def f():\n    return 1\n")
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "import helper_mod15")
    cell = "%%step s\ny = helper_mod15.f()\n"
    run_ok(ip, cell)
    source.write_text("def f():\n    return 2\n")  # edited; the kernel still runs the module it imported
    capsys.readouterr()
    run_ok(ip, cell)
    assert ip.user_ns["y"] == 1  # what running the cell in this kernel gives
    said = capsys.readouterr().out
    importlib.reload(sys.modules["helper_mod15"])  # the kernel runs the file as it is now, as a run would
    run_ok(ip, cell)  # nothing was stored under the edited code's key: it runs
    assert ip.user_ns["y"] == 2 and "reused from run" not in capsys.readouterr().out
    ip.user_ns.pop("y")
    run_ok(ip, cell)  # what it stored is sure: reused
    assert ip.user_ns["y"] == 2 and "s: reused from run" in capsys.readouterr().out
    assert "s: runs (cannot be reused: local module 'helper_mod15' changed on disk after" in said
    monkeypatch.delitem(sys.modules, "helper_mod15", raising=False)


def test_a_step_that_raises_leaves_no_key_for_the_steps_run_after_it(ip, tmp_path, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%pipeline_parameters\nword = 'whole'\n")
    path = str(tmp_path / "part.txt")
    step = f"%%step a\nopen({path!r}, 'w').write(word)\nif word == 'half':\n    raise RuntimeError('stopped')\n"
    after = f"%%step b --after a\ntext = open({path!r}).read()\n"
    run_ok(ip, step)
    run_ok(ip, after)
    assert ip.user_ns["text"] == "whole"
    run_ok(ip, "word = 'half'")
    assert not ip.run_cell(step, store_history=True).success  # wrote half the file, then failed
    capsys.readouterr()
    run_ok(ip, after)  # runs: what the failed step left behind is read, not the earlier result
    assert ip.user_ns["text"] == "half"
    assert "b: runs (cannot be reused: step 'a' it runs after has not run with reuse" in capsys.readouterr().out


def test_a_loop_variable_left_on_a_value_does_not_stop_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\ntrain, test = [1], [2]\nfor part in [train, test]:\n    part.append(0)\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "train", "test", "part") and ip.user_ns["test"] == [2, 0]


def test_functions_and_classes_a_step_defines_see_the_kernels_globals(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "K2 = 2")
    run_ok(ip, "class Base:\n    pass\n")
    cell = (
        "%%step s\ndef h(x):\n    return x * K2\nclass M(Base):\n    def f(self):\n        return K2\n"
        "m = M()\nb = Base()\nv = h(1)\n"
    )
    run_ok(ip, cell)
    for name in ("h", "v", "m", "M", "b"):  # a restart
        ip.user_ns.pop(name)
    run_ok(ip, cell)
    said = capsys.readouterr().out
    run_ok(ip, "K2 = 5")  # a later cell: the notebook's own functions read the kernel's globals
    ns = ip.user_ns
    assert (ns["h"](1), ns["m"].f(), isinstance(ns["m"], ns["M"])) == (5, 5, True)
    assert "s: runs (cannot be reused: 'h' is a function defined in the notebook" in said


def test_a_step_using_the_notebooks_classes_is_still_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "class Base:\n    def f(self):\n        return 1\n")
    assert "s: reused from run" in run_again(ip, capsys, "%%step s\nb = Base()\n", "b")
    assert type(ip.user_ns["b"]) is ip.user_ns["Base"]


def test_a_name_the_step_deletes_is_gone_after_a_reuse_too(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load, use = "%%step a\ntmp = [1]\n", "%%step s\nz = len(tmp)\ndel tmp\n"
    run_ok(ip, load)
    run_ok(ip, use)
    assert "tmp" not in ip.user_ns
    ip.user_ns.pop("z")  # a restart
    run_ok(ip, load)
    run_ok(ip, use)
    assert "tmp" not in ip.user_ns and ip.user_ns["z"] == 1
    assert "s: reused from run" in capsys.readouterr().out


def test_a_name_deleted_only_on_some_paths_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load, use = "%%step a\ntmp = [1]\n", "%%step s\nz = len(tmp)\nif z:\n    del tmp\n"
    run_ok(ip, load)
    run_ok(ip, use)
    ip.user_ns.pop("z")
    run_ok(ip, load)
    capsys.readouterr()
    run_ok(ip, use)
    assert "tmp" not in ip.user_ns
    assert "s: runs (cannot be reused: it deletes 'tmp' on some paths only" in capsys.readouterr().out
