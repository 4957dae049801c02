"""Reuse never gives a value other than running the cell would: carried values, secrets, imports."""

from __future__ import annotations

from helpers.shell import run_ok
from nbmagic.store.runs import RunStore


def test_a_carried_value_changed_by_a_later_cell_makes_the_step_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 2")
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20
    run_ok(ip, "k = 3")  # a later cell
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")  # the step cell run again: running it gives 30
    assert ip.user_ns["y"] == 30
    assert "not the value its stored results were computed with" in capsys.readouterr().out
    # k = 3 is not what the notebook's cells before the step give it: a run would compute 20 under the same key
    run = run_ok(ip, "%compile_run --quiet")
    assert run.value("y") == 20
    # after a restart with k = 2 the step's stored results are reused again
    for name in ("y", "k"):
        ip.user_ns.pop(name)
    run_ok(ip, "k = 2")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20
    assert "s: reused from run" in capsys.readouterr().out


def test_a_run_stores_the_carried_values_its_results_were_computed_with(ip, capsys):
    run_ok(ip, "k = 2")
    run_ok(ip, "%%step s\ny = k * 10\n")
    run = run_ok(ip, "%compile_run --quiet")
    entry = RunStore().cache_get(run.steps["s"].cache_key)
    assert entry is not None and set(entry.carried) == {"k"} and entry.carried["k"]
    # a cell reuses it only while the kernel holds the same k
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 5")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 50
    run_ok(ip, "k = 2")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20 and "s: reused from run" in capsys.readouterr().out
