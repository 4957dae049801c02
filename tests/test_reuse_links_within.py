"""Arrays, frames and tensors whose memory overlaps inside ONE stored value (a dict holding an array and its view,
an object holding a frame and its ``.values``): stored as one pickle they load as two copies, so the cell runs."""

from __future__ import annotations

import pytest

from helpers.shell import run_ok

CASES = {
    "a dict of an array and its view": (
        "d = (lambda X: {'X': X, 'v': X[:5]})(np.arange(10.0))\n",
        "d['X'][0] = 7.0\nseen = float(d['v'][0])\n",
        "d",
    ),
    "a list of an array and its view": (
        "d = (lambda X: [X, X[2:]])(np.arange(10.0))\n",
        "d[0][2] = 7.0\nseen = float(d[1][0])\n",
        "d",
    ),
    "an object holding a frame and its values": (
        "class Box:\n    pass\nd = Box()\nd.df = pd.DataFrame({'a': np.arange(10.0)})\nd.values = d.df.values\n",
        "d.df.iloc[0, 0] = 7.0\nseen = float(d.values[0, 0])\n",
        "d",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_overlapping_memory_inside_one_value_makes_the_cell_run(ip, capsys, case):
    build, change, name = CASES[case]
    cell = "%%step s\nimport numpy as np\nimport pandas as pd\n" + build
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    first = capsys.readouterr().out
    for n in ("d", "Box"):
        ip.user_ns.pop(n, None)
    run_ok(ip, cell)
    second = capsys.readouterr().out
    run_ok(ip, change)
    assert ip.user_ns["seen"] == 7.0, second  # as running the cell gives
    assert "reused from run" not in second
    lines = [line for line in first.splitlines() if "cannot be reused next time" in line]
    assert lines == [
        f"s: cannot be reused next time ({name!r} holds two arrays or frames over the same memory; loaded from"
        " the store they would be two copies)"
    ], first


def test_the_very_same_array_twice_inside_one_value_is_reused(ip, capsys):
    cell = "%%step s\nimport numpy as np\nd = (lambda X: {'X': X, 'Y': X})(np.arange(10.0))\n"
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    assert "cannot be reused" not in capsys.readouterr().out
    ip.user_ns.pop("d")
    run_ok(ip, cell)
    assert "s: reused from run" in capsys.readouterr().out
    run_ok(ip, "d['X'][0] = 7.0")
    assert ip.user_ns["d"]["Y"][0] == 7.0


def test_disjoint_views_inside_one_value_are_reused(ip, capsys):
    cell = "%%step s\nimport numpy as np\nd = (lambda X: {'a': X[:5], 'b': X[5:]})(np.arange(10.0))\n"
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    assert "cannot be reused" not in capsys.readouterr().out


def test_a_cell_does_not_reuse_what_compile_run_stored_for_such_a_value(ip, capsys):
    cell = "%%step s\nimport numpy as np\nd = (lambda X: {'X': X, 'v': X[:5]})(np.arange(10.0))\n"
    run_ok(ip, cell)
    run = run_ok(ip, "%compile_run --quiet")
    assert run.status == "done", run.error
    ip.user_ns.pop("d")
    run_ok(ip, "%pipeline_config --reuse")
    capsys.readouterr()
    run_ok(ip, cell)
    said = capsys.readouterr().out
    assert "s: runs (cannot be reused: 'd' holds two arrays or frames over the same memory" in said
    run_ok(ip, "d['X'][0] = 7.0")
    assert ip.user_ns["d"]["v"][0] == 7.0
