"""A reused cell leaves the kernel as running it would: names it binds on some paths or out of sight of its code,
objects other kernel values share, parts of a module's values; and the checks' own bounds."""

from __future__ import annotations

import re
import sys
import warnings

import pytest

from helpers.shell import run_ok


def _restart(ip, *names: str) -> None:
    """What a kernel restart does to the names the test's cells bound."""
    for name in names:
        ip.user_ns.pop(name, None)


def _run_all_twice(ip, capsys, cells: list[str], *names: str) -> str:
    """Run the cells, restart the kernel, and run them all again: what the second Run All printed."""
    for cell in cells:
        run_ok(ip, cell)
    _restart(ip, *names)
    capsys.readouterr()
    for cell in cells:
        run_ok(ip, cell)
    return capsys.readouterr().out


def test_a_part_of_a_local_modules_value_is_not_loaded_as_a_copy(ip, capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rcfg_nested.py").write_text("CONFIG = {'train': {'lr': 1}}\n")
    cell = "%%step s\nimport rcfg_nested\ncfg = rcfg_nested.CONFIG['train']\n"
    try:
        run_ok(ip, "%pipeline_config --reuse")
        run_ok(ip, cell)
        first = capsys.readouterr().out
        _restart(ip, "cfg")
        run_ok(ip, cell)
        second = capsys.readouterr().out
        run_ok(ip, "cfg['lr'] = 2")
        assert sys.modules["rcfg_nested"].CONFIG["train"] == {"lr": 2}, second
        assert "s: cannot be reused next time ('cfg' holds rcfg_nested.CONFIG" in first
        assert "reused from run" not in second
    finally:
        sys.modules.pop("rcfg_nested", None)


def test_a_step_importing_numpy_with_small_values_is_not_charged_for_numpys_values(monkeypatch):
    import numpy as np

    import nbmagic.run.reuse_links as rl

    # with no time at all, only a walk that reaches its clock check (every 512 objects) can fail
    monkeypatch.setattr(rl, "TIME_LIMIT", 0.0)
    values = {"X": np.arange(20.0), "d": {"k": [1, 2], "v": (3, "a")}}
    assert rl.links(values, {}, ("numpy",)) == (None, {})


def test_reading_a_modules_attributes_prints_no_warning(ip, capsys):
    pytest.importorskip("torch")
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "import torch")  # its own import warnings, if any, are not the step's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_ok(ip, "%%step s\nimport torch\nsizes = [1, 2]\n")
    assert "s: cannot be reused" not in capsys.readouterr().out
    assert [str(w.message) for w in caught] == []


def test_a_name_assigned_on_a_path_not_taken_is_not_loaded_over_the_kernels(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "y = 0")
    cell = "%%step s\nn = 3\nif n > 5:\n    y = n\n"
    run_ok(ip, cell)
    first = capsys.readouterr().out
    run_ok(ip, "y = 100")  # an ordinary cell changed and run again
    run_ok(ip, cell)  # running the step leaves y alone
    second = capsys.readouterr().out
    assert ip.user_ns["y"] == 100, second
    assert "reused from run" not in second
    assert "s: cannot be reused next time (it assigns 'y' on some paths only" in first


def test_a_name_assigned_on_a_path_taken_is_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nn = 7\nif n > 5:\n    y = [n]\n"
    run_ok(ip, cell)
    assert "cannot be reused" not in capsys.readouterr().out
    _restart(ip, "n", "y")
    run_ok(ip, cell)
    assert "s: reused from run" in capsys.readouterr().out
    assert ip.user_ns["y"] == [7]


def test_names_bound_through_globals_make_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    step = "%%step s\nfor name in ['a', 'b']:\n    globals()[name] = [name]\ny = 1\n"
    run_ok(ip, step)
    first = capsys.readouterr().out
    _restart(ip, "a", "b", "y", "name")
    run_ok(ip, step)
    second = capsys.readouterr().out
    assert ip.user_ns.get("a") == ["a"] and ip.user_ns.get("b") == ["b"], second
    assert "reused from run" not in second
    # either name: one the kernel already held may be rebound to an object of a recycled id
    assert re.search(r"s: cannot be reused next time \(it binds '[ab]' out of sight of its code", first), first


def test_a_name_removed_through_globals_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "scratch = 1")
    step = "%%step s\nglobals().pop('scratch', None)\ny = 1\n"
    run_ok(ip, step)
    first = capsys.readouterr().out
    run_ok(ip, "scratch = 1")
    run_ok(ip, step)
    assert "scratch" not in ip.user_ns
    assert "s: cannot be reused next time (it removes 'scratch' out of sight of its code" in first


def test_a_list_changed_in_place_that_another_value_holds_is_not_replaced_by_a_copy(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\nbox = {'r': rows}\n"
    grow = "%%step grow\nrows.append(3)\n"
    out = _run_all_twice(ip, capsys, [load, grow], "rows", "box")
    assert ip.user_ns["box"]["r"] is ip.user_ns["rows"] and ip.user_ns["rows"] == [1, 2, 3], out
    assert "load: reused from run" in out
    assert (
        "grow: runs (cannot be reused: an object of 'rows' is also reached from 'box'; the cell may change it in place"
        in out
    )


def test_a_list_changed_in_place_that_nothing_else_holds_is_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\n"
    grow = "%%step grow\nrows.append(3)\n"
    out = _run_all_twice(ip, capsys, [load, grow], "rows")
    assert "grow: reused from run" in out and ip.user_ns["rows"] == [1, 2, 3]


def test_a_carried_list_a_notebook_function_appends_to_under_another_name_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cells = ["history = []\ndef log(x):\n    history.append(x)\n", "seen = history\n", "%%step s\nlog(1)\ny = 2\n"]
    out = _run_all_twice(ip, capsys, cells, "history", "seen", "y", "log")
    assert ip.user_ns["seen"] == [1] and ip.user_ns["seen"] is ip.user_ns["history"], out
    assert "s: runs (cannot be reused: an object of 'history' is also reached from 'seen'" in out


def test_a_model_fitted_in_place_that_an_earlier_cells_object_holds_makes_the_cell_run(ip, capsys):
    pytest.importorskip("sklearn")
    run_ok(ip, "%pipeline_config --reuse")
    cells = [
        "%%step make\nfrom sklearn.linear_model import LinearRegression\nmodel = LinearRegression()\n",
        "holder = {'m': model}\n",
        "%%step fit\nmodel.fit([[0.0], [1.0]], [0.0, 2.0])\n",
    ]
    out = _run_all_twice(ip, capsys, cells, "model", "holder", "LinearRegression")
    assert ip.user_ns["holder"]["m"] is ip.user_ns["model"], out
    assert hasattr(ip.user_ns["holder"]["m"], "coef_"), out
    assert "fit: runs (cannot be reused: an object of 'model' is also reached from 'holder'" in out


def test_a_kernel_too_large_to_check_makes_the_cell_run(ip, capsys, monkeypatch):
    import nbmagic.run.reuse_links as rl

    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\n"
    grow = "%%step grow\nrows.append(3)\n"
    run_ok(ip, load)
    run_ok(ip, grow)
    _restart(ip, "rows")
    run_ok(ip, load)
    run_ok(ip, "many = [[i] for i in range(5000)]")  # more objects than the bound set below
    monkeypatch.setattr(rl, "LIMIT", 1000)
    monkeypatch.setattr(sys.modules["nbmagic.run.reuse_kernel"], "LIMIT", 1000)
    capsys.readouterr()
    run_ok(ip, grow)
    out = capsys.readouterr().out
    assert "grow: runs (cannot be reused: the kernel's values take too much to check for others reaching 'rows')" in out
    assert ip.user_ns["rows"] == [1, 2, 3]
    _restart(ip, "many")


def test_step_help_tells_what_the_kernels_names_make_run(ip, capsys):
    ip.run_cell("%%step?")
    flat = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).split())
    assert "only names the run bound are stored" in flat
    assert "binds or removes a name its code does not show" in flat
    assert "assigns a name on some paths only" in flat
    assert "a loaded copy would leave the other holder stale" in flat


def test_a_large_frame_of_strings_elsewhere_in_the_kernel_does_not_stop_the_reuse(ip, capsys, monkeypatch):
    pytest.importorskip("pandas")
    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\n"
    grow = "%%step grow\nrows.append(3)\n"
    run_ok(ip, load)
    run_ok(ip, grow)
    _restart(ip, "rows")
    _restart(ip, "many")
    run_ok(ip, load)
    run_ok(ip, "import pandas as pd\ntexts = pd.DataFrame({'t': [str(i) for i in range(5000)]})")
    monkeypatch.setattr(sys.modules["nbmagic.run.reuse_kernel"], "LIMIT", 3000)  # fewer objects than rows
    capsys.readouterr()
    run_ok(ip, grow)
    out = capsys.readouterr().out
    assert "grow: reused from run" in out and ip.user_ns["rows"] == [1, 2, 3], out


def test_a_part_changed_in_place_that_another_name_holds_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\nbox = {'r': rows}\n"
    grow = "%%step grow\nbox['r'].append(3)\n"
    out = _run_all_twice(ip, capsys, [load, grow], "rows", "box")
    assert ip.user_ns["rows"] == [1, 2, 3] and ip.user_ns["box"]["r"] is ip.user_ns["rows"], out
    assert "grow: runs (cannot be reused: an object of 'box' is also reached from 'rows'" in out


def test_a_holder_stored_its_own_way_is_looked_into_by_what_it_references(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    load = "%%step load\nrows = [1, 2]\n"
    grow = "%%step grow\nrows.append(3)\n"
    run_ok(ip, load)
    run_ok(ip, grow)
    _restart(ip, "rows")
    run_ok(ip, load)
    run_ok(ip, "import collections\nkept = collections.OrderedDict(r=rows)")  # pickled through its own __reduce__
    capsys.readouterr()
    run_ok(ip, grow)
    out = capsys.readouterr().out
    assert ip.user_ns["kept"]["r"] is ip.user_ns["rows"] and ip.user_ns["rows"] == [1, 2, 3], out
    assert "grow: runs (cannot be reused: an object of 'rows' is also reached from 'kept'" in out
    _restart(ip, "kept")


def test_a_runs_results_without_a_name_assigned_on_a_path_not_taken_make_the_cell_run_with_a_line(ip, capsys):
    cell = "%%step s\nn = 3\nif n > 5:\n    y = [n]\n"
    run_ok(ip, cell)
    run_ok(ip, "%compile_run --quiet")  # its results hold n only
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "y = 'kernel'")
    capsys.readouterr()
    run_ok(ip, cell)
    out = capsys.readouterr().out
    assert "s: runs (cannot be reused: its stored results do not hold 'y', which it assigns)" in out
    assert ip.user_ns["y"] == "kernel"


def test_a_name_read_and_assigned_on_some_paths_is_stored_even_when_left_as_it_was(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    make = "%%step make\nrows = [3, 1, 2]\n"
    tidy = "%%step tidy\nif len(rows) > 1:\n    rows = sorted(rows) if rows[0] > rows[-1] else rows\n"
    run_ok(ip, make)
    run_ok(ip, tidy)
    run_ok(ip, tidy)  # run again: rows is bound to the very list it held
    assert "cannot be reused" not in capsys.readouterr().out
    _restart(ip, "rows")
    run_ok(ip, make)
    run_ok(ip, tidy)
    assert "tidy: reused from run" in capsys.readouterr().out and ip.user_ns["rows"] == [1, 2, 3]
