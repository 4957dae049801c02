"""Reuse as a user breaks it: what a full Run All would give, or the cell runs."""

from __future__ import annotations

from helpers.shell import run_ok

S = "%%step s\na = []\nb = a\n"
T = "%%step t\na.append(1)\nn = len(b)\n"


def test_two_names_for_one_object_make_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, S)
    first = capsys.readouterr().out
    for name in ("a", "b"):  # a restart
        ip.user_ns.pop(name)
    run_ok(ip, S)
    run_ok(ip, T)  # as in a full Run All: appending to a is appending to b
    assert ip.user_ns["n"] == 1
    assert ip.user_ns["a"] is ip.user_ns["b"]
    assert "reused from run" not in capsys.readouterr().out
    assert "s: cannot be reused next time ('b' and 'a' are one object" in first


def test_a_name_bound_to_a_value_the_step_reads_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step load\nrows = [1, 2]\n")
    run_ok(ip, "%%step alias\nsame = rows\nk = 1\n")
    assert "alias: cannot be reused next time ('same' and 'rows' are one object" in capsys.readouterr().out


def test_names_bound_to_one_immutable_value_are_still_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nx = y = 7\nname = label = 'a'\npair = other = (1, 2)\n"
    run_ok(ip, cell)
    for name in ("x", "y", "name", "label", "pair", "other"):
        ip.user_ns.pop(name)
    capsys.readouterr()
    run_ok(ip, cell)
    assert "s: reused from run" in capsys.readouterr().out
    assert (ip.user_ns["x"], ip.user_ns["label"], ip.user_ns["other"]) == (7, "a", (1, 2))
