"""Names a reused cell binds or removes, told from its code: ``%time`` may not bind, ``del obj.attr`` removes no
name, and ``**locals()`` only reads the namespace."""

from __future__ import annotations

from helpers.shell import run_ok


def test_a_name_assigned_under_time_may_not_be_bound(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "x = 0\nd = 0\n")
    cell = "%%step s\nn = 1\n%time x = 1 / d\n"  # %time prints the ZeroDivisionError and the cell goes on
    run_ok(ip, cell)
    first = capsys.readouterr().out
    run_ok(ip, "x = 5\n")
    run_ok(ip, cell)
    assert ip.user_ns["x"] == 5, "running the cell leaves x alone"
    assert "s: cannot be reused next time (it assigns 'x' on some paths only" in first


def test_deleting_an_attribute_or_an_item_removes_no_name(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "import os\nclass Box:\n    a = 1\n")
    os_cell = "%%step s\nos.environ['NBMAGIC_TEST_DEL'] = '1'\ndel os.environ['NBMAGIC_TEST_DEL']\nn = 1\n"
    run_ok(ip, os_cell)
    run_ok(ip, os_cell)
    assert "os" in ip.user_ns and ip.user_ns["n"] == 1
    parts = "%%step t\nparts = {'a': 1, 'b': 2}\ndel parts['a']\n"
    run_ok(ip, parts)
    ip.user_ns.pop("parts")
    capsys.readouterr()
    run_ok(ip, parts)
    assert "t: reused" in capsys.readouterr().out and ip.user_ns["parts"] == {"b": 2}


def test_del_of_names_in_a_tuple_still_counts(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "a = 1\nb = 2\n")
    cell = "%%step s\nc = a + b\ndel a, (b,)\n"
    run_ok(ip, cell)
    run_ok(ip, "a = 1\nb = 2\n")
    run_ok(ip, cell)
    assert "a" not in ip.user_ns and "b" not in ip.user_ns and ip.user_ns["c"] == 3


def test_unpacking_or_formatting_with_the_namespace_is_only_reading(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "name = 'x'\n")
    cell = "%%step s\nlabel = '{name}-1'.format(**locals())\nsize = len(globals())\n"
    run_ok(ip, cell)
    assert "cannot be reused" not in capsys.readouterr().out
    ip.user_ns.pop("label"), ip.user_ns.pop("size")
    run_ok(ip, cell)
    assert "s: reused" in capsys.readouterr().out and ip.user_ns["label"] == "x-1"


def test_passing_the_namespace_to_a_function_still_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "def fill(ns):\n    if ns.get('flag'):\n        ns['hidden'] = 1\n")  # binds nothing this time
    run_ok(ip, "%%step s\nfill(globals())\nn = 1\n")
    assert "it writes through globals() (or passes it on)" in capsys.readouterr().out
