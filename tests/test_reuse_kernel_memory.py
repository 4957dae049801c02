"""A kernel value sharing memory with a name a reused cell would rebind (a frame over an array, a view of it):
a change in place by the cell would reach it, a loaded copy would not, so the cell runs."""

from __future__ import annotations

import pytest

from helpers.shell import run_ok

LOAD = "%%step load\nimport numpy as np\narr = np.zeros(10)\n"
CHANGE = "%%step change\narr += 1\n"
HOLDERS = {
    "a frame made over the array": (
        "import pandas as pd\nholder = pd.DataFrame(arr, copy=False)\n",
        "holder.iloc[0, 0]",
    ),
    "a view of the array": ("holder = arr[:5]\n", "holder[0]"),
    "a series over the array inside a dict": (
        "import pandas as pd\nholder = {'s': pd.Series(arr, copy=False)}\n",
        "holder['s'].iloc[0]",
    ),
}


@pytest.mark.parametrize("case", list(HOLDERS))
def test_a_value_sharing_memory_with_a_name_the_cell_changes_makes_the_cell_run(ip, capsys, case):
    ordinary, read = HOLDERS[case]
    run_ok(ip, "%pipeline_config --reuse")
    for cell in (LOAD, ordinary, CHANGE):
        run_ok(ip, cell)
    for name in ("arr", "holder"):
        ip.user_ns.pop(name)  # restart, then run all
    capsys.readouterr()
    for cell in (LOAD, ordinary, CHANGE):
        run_ok(ip, cell)
    out = capsys.readouterr().out
    run_ok(ip, f"seen = float({read})")
    assert ip.user_ns["seen"] == 1.0 and ip.user_ns["arr"][0] == 1.0, out  # as running the cells gives
    assert "load: reused from run" in out
    lines = [line for line in out.splitlines() if line.startswith("change:")]
    assert len(lines) == 1 and lines[0].startswith("change: runs (cannot be reused: "), out
    assert "'arr'" in lines[0] and "'holder'" in lines[0], out


def test_a_copy_of_the_array_elsewhere_lets_the_cell_be_reused(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    ordinary = "import pandas as pd\nholder = pd.DataFrame(arr.copy())\n"
    for cell in (LOAD, ordinary, CHANGE):
        run_ok(ip, cell)
    for name in ("arr", "holder"):
        ip.user_ns.pop(name)
    capsys.readouterr()
    for cell in (LOAD, ordinary, CHANGE):
        run_ok(ip, cell)
    assert "change: reused from run" in capsys.readouterr().out
    assert ip.user_ns["arr"][0] == 1.0
