"""Reuse never leaves the kernel other than running the cell would: shared objects, notebook code inside values."""

from __future__ import annotations

import sys

from helpers.reuse_cells import run_again
from helpers.shell import run_ok


def _restart(ip, *names):
    for name in names:
        ip.user_ns.pop(name, None)


def test_a_list_held_inside_a_dict_is_that_list_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\na = []\nb = {'x': a}\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "a", "b", strict=False)
    run_ok(ip, "a.append(1)")
    assert ip.user_ns["b"] == {"x": [1]}  # as running the cell gives


def test_a_list_held_by_two_values_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nb = {'x': []}\nc = [b['x'], 2]\n"
    run_ok(ip, cell)
    first = capsys.readouterr().out
    _restart(ip, "b", "c")
    run_ok(ip, cell)
    run_ok(ip, "c[0].append(1)")
    assert ip.user_ns["b"] == {"x": [1]}
    assert "reused from run" not in capsys.readouterr().out
    assert "s: cannot be reused next time ('c' and 'b' hold a shared object" in first


def test_a_value_holding_what_the_step_reads_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step load\nrows = [1, 2]\n")
    run_ok(ip, "%%step wrap\nbox = {'rows': rows}\n")
    assert "wrap: cannot be reused next time ('box' and 'rows' hold a shared object" in capsys.readouterr().out


def test_a_part_of_what_the_step_reads_is_that_part_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step load\nnested = {'rows': [[1, 2]]}\n")
    cell = "%%step s\npart = nested['rows'][0]\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "part")
    assert ip.user_ns["part"] is ip.user_ns["nested"]["rows"][0]


def test_a_numpy_view_of_another_array_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nimport numpy as np\nX = np.arange(20.0)\nb = X[:10]\n"
    run_ok(ip, cell)
    first = capsys.readouterr().out
    _restart(ip, "X", "b", "np")
    run_ok(ip, cell)
    run_ok(ip, "X[0] = 99.0")
    assert ip.user_ns["b"][0] == 99.0
    assert "reused from run" not in capsys.readouterr().out
    assert "s: cannot be reused next time ('b' and 'X' hold a shared object" in first


def test_separate_arrays_and_containers_are_still_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nimport numpy as np\nX = np.arange(20.0)\nb = X[:10].copy()\nd = {'k': [1, 2], 'v': (3, 'a')}\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "X", "b", "d", "np", strict=False)
    assert ip.user_ns["d"] == {"k": [1, 2], "v": (3, "a")} and list(ip.user_ns["b"]) == list(range(10))


def test_a_loop_leftover_is_the_object_it_was_left_on_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\ntrain, test = [1], [2]\nfor d in [train, test]:\n    d.append(0)\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "train", "test", "d", strict=False)
    assert ip.user_ns["d"] is ip.user_ns["test"]
    run_ok(ip, "d.append(5)")
    assert ip.user_ns["test"] == [2, 0, 5]


def test_a_loop_leftover_inside_another_value_is_that_item_after_a_reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nrows = [[1], [2]]\nfor row in rows:\n    row.append(0)\n"
    assert "s: reused from run" in run_again(ip, capsys, cell, "rows", "row", strict=False)
    assert ip.user_ns["row"] is ip.user_ns["rows"][1]


def test_a_lambda_in_a_list_reads_the_kernels_globals(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 2")
    cell = "%%step s\nfns = [lambda x: x * k]\n"
    said = run_again(ip, capsys, cell, "fns", strict=False)
    run_ok(ip, "k = 5")
    assert ip.user_ns["fns"][0](1) == 5
    assert "s: runs (cannot be reused: 'fns' is a function defined in the notebook or holds one" in said


def test_a_partial_and_an_object_holding_a_notebook_function_read_the_kernels_globals(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 2\nclass Holder:\n    def __init__(self, f):\n        self.f = f\n")
    cell = "%%step s\nimport functools\np = functools.partial(lambda x, y: x * y * k, 1)\nh = Holder(lambda x: x + k)\n"
    said = run_again(ip, capsys, cell, "p", "h", "functools", strict=False)
    run_ok(ip, "k = 5")
    assert (ip.user_ns["p"](1), ip.user_ns["h"].f(0)) == (5, 5)
    assert "s: runs (cannot be reused:" in said and "is a function defined in the notebook or holds one" in said


def test_a_function_transformer_holding_a_notebook_function_reads_the_kernels_globals(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 2")
    cell = "%%step s\nfrom sklearn.preprocessing import FunctionTransformer\nft = FunctionTransformer(func=lambda x: x * k)\n"
    said = run_again(ip, capsys, cell, "ft", "FunctionTransformer", strict=False)
    run_ok(ip, "k = 5")
    assert ip.user_ns["ft"].func(1) == 5  # reused only when the loaded function reads the kernel's own globals
    assert "s: reused from run" in said or "s: runs (cannot be reused: 'ft' is a function defined" in said


def test_a_cell_reusing_what_compile_run_computed_keeps_the_links_between_its_values(ip, capsys):
    run_ok(ip, "%%step s\na = []\nb = {'x': a}\n")
    run_ok(ip, "%%step t\nv = {'x': []}\nw = [v['x']]\n")
    run_ok(ip, "%compile_run --quiet")
    for name in ("a", "b", "v", "w"):
        ip.user_ns.pop(name)
    run_ok(ip, "%pipeline_config --reuse")
    capsys.readouterr()
    run_ok(ip, "%%step s\na = []\nb = {'x': a}\n")
    run_ok(ip, "%%step t\nv = {'x': []}\nw = [v['x']]\n")
    said = capsys.readouterr().out
    assert "s: reused from run" in said and ip.user_ns["b"]["x"] is ip.user_ns["a"]
    assert "t: runs (cannot be reused: 'w' and 'v' hold a shared object" in said
    assert ip.user_ns["w"][0] is ip.user_ns["v"]["x"]


def test_restore_after_compile_run_gets_back_values_a_kernel_could_not_reuse(ip, capsys):
    from nbmagic.restore import state_after
    from nbmagic.store.runs import RunStore

    run_ok(ip, "%%step t\nv = {'x': []}\nw = [v['x']]\n")
    run_ok(ip, "%%step big\nrecs = [{'i': i} for i in range(60000)]\n")  # too many to check
    run_ok(ip, "%compile_run --quiet")
    store = RunStore()
    run_id = store.list_runs()[0].id
    state = state_after(store, run_id)
    assert {"v", "w", "recs"} <= set(state.items) and not state.not_kept
    for name in ("v", "w", "recs"):
        ip.user_ns.pop(name)
    capsys.readouterr()
    run_ok(ip, f"%restore {run_id}")
    assert ip.user_ns["v"] == {"x": []} and len(ip.user_ns["recs"]) == 60000


def test_values_too_large_to_walk_make_the_cell_run_next_time(ip, capsys, monkeypatch):
    import nbmagic.run.reuse_links as reuse_links

    monkeypatch.setattr(reuse_links, "LIMIT", 50)
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nrows = [[i] for i in range(100)]\n"
    run_ok(ip, cell)
    assert "s: cannot be reused next time (its values are too large to check for shared objects)" in (
        capsys.readouterr().out
    )
    run_ok(ip, cell)
    assert "reused from run" not in capsys.readouterr().out


def test_a_value_whose_class_cannot_be_asked_makes_the_cell_run_next_time_not_fail(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "class Odd:\n    @property\n    def __class__(self):\n        raise RuntimeError('no')\n")
    cell = "%%step s\nx = Odd()\ny = [x]\n"
    run_ok(ip, cell)  # run_ok fails the test when the cell raises
    assert "s: cannot be reused next time (" in capsys.readouterr().out
    run_ok(ip, cell)
    assert "reused from run" not in capsys.readouterr().out
    _restart(ip, "x", "y", "Odd")  # the fixture's kernel is shared with later tests


def test_many_names_bound_to_items_of_a_long_list_load_as_those_items(monkeypatch):
    import nbmagic.run.reuse_links as reuse_links
    from nbmagic.run.reuse_links import links

    monkeypatch.setattr(reuse_links, "TIME_LIMIT", 60.0)  # what is checked here is the work, not the clock
    rows = [[i] for i in range(20_000)]
    values = {"rows": rows, **{f"r{i}": rows[i * 60] for i in range(300)}}
    reason, aliases = links(values, {})
    assert reason is None and aliases["r299"] == ["rows", 17_940] and len(aliases) == 300


def test_a_walk_past_its_time_says_it_cannot_be_sure(monkeypatch):
    import nbmagic.run.reuse_links as reuse_links

    monkeypatch.setattr(reuse_links, "TIME_LIMIT", 0.0)
    reason, _ = reuse_links.links({"rows": [[i] for i in range(5_000)]}, {})
    assert reason == "its values take too long to check for shared objects"


def _runs_or_keeps_the_link(ip, capsys, cell, names, change, check):
    run_ok(ip, "%pipeline_config --reuse")
    said = run_again(ip, capsys, cell, *names, strict=False)
    run_ok(ip, change)
    ip.user_ns.pop("ok_", None)
    run_ok(ip, f"ok_ = {check}")
    assert ip.user_ns["ok_"] is True, said  # as running the cell gives, whether reused or run


def test_a_pandas_object_column_holding_a_list_keeps_the_link(ip, capsys):
    cell = "%%step s\nimport pandas as pd\na = []\ndf = pd.DataFrame({'c': [a, 1]})\n"
    _runs_or_keeps_the_link(ip, capsys, cell, ("a", "df"), "a.append(1)", "df['c'][0] == [1]")


def test_a_deque_holding_a_list_keeps_the_link(ip, capsys):
    cell = "%%step s\nimport collections\na = []\nq = collections.deque([a])\n"
    _runs_or_keeps_the_link(ip, capsys, cell, ("a", "q"), "a.append(1)", "q[0] == [1]")


def test_a_closure_from_a_local_module_keeps_the_link(ip, capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rlmk.py").write_text("def make(a):\n    def f():\n        return len(a)\n    return f\n")
    cell = "%%step s\nimport rlmk\na = []\nf = rlmk.make(a)\n"
    try:
        _runs_or_keeps_the_link(ip, capsys, cell, ("a", "f"), "a.append(1)", "f() == 1")
    finally:
        sys.modules.pop("rlmk", None)


def test_an_object_stored_its_own_way_makes_the_cell_run_next_time(ip, capsys):
    run_ok(
        ip,
        "class Box:\n    def __init__(self, a):\n        self.a = a\n    def __reduce__(self):\n        return (Box, (self.a,))\n",
    )
    cell = "%%step s\na = []\nb = Box(a)\nc = Box(a)\n"
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    assert "s: cannot be reused next time (a Box cannot be checked for shared objects)" in capsys.readouterr().out


def test_a_value_held_by_an_imported_module_makes_the_cell_run_next_time(ip, capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rlcfg.py").write_text("CONFIG = {'k': 1}\n")
    cell = "%%step s\nimport rlcfg\ncfg = rlcfg.CONFIG\n"
    try:
        run_ok(ip, "%pipeline_config --reuse")
        run_ok(ip, cell)
        assert "s: cannot be reused next time ('cfg' holds rlcfg.CONFIG;" in capsys.readouterr().out
        _restart(ip, "cfg")
        run_ok(ip, cell)
        run_ok(ip, "cfg['k'] = 2")
        assert sys.modules["rlcfg"].CONFIG == {"k": 2}
    finally:
        sys.modules.pop("rlcfg", None)
