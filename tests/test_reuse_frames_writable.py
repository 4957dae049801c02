"""Frames loaded from the store are frames the notebook could have made: written into in place after a reuse, in a
local runner step on an input frame, and after ``%restore``."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.shell import run_ok

LOAD = (
    "%%step load\nimport pandas as pd\nimport numpy as np\n"
    "df = pd.DataFrame({'a': np.arange(4.0), 'n': np.arange(4), 'c': pd.Categorical(list('xyxy')),"
    " 's': list('pqrs'), 't': pd.date_range('2024-01-01', periods=4)}, index=[10, 20, 30, 40])\n"
)
WRITES = (
    "df.iloc[0, 0] = 9.0\ndf['a'] *= 2\ndf.loc[20, 'n'] = 7\ndf.loc[30, 'c'] = 'y'\n"
    "df.loc[40, 't'] = pd.Timestamp('2000-01-01')\ndf.loc[10, 's'] = 'z'\n"
)


def _check(df: pd.DataFrame) -> None:
    assert df["a"].tolist() == [18.0, 2.0, 4.0, 6.0]
    assert df["n"].tolist() == [0, 7, 2, 3]
    assert df["c"].tolist() == ["x", "y", "y", "y"]
    assert df["s"].tolist() == ["z", "q", "r", "s"]
    assert df["t"].iloc[3] == pd.Timestamp("2000-01-01")


def test_a_reused_frame_is_written_into_as_the_notebooks_frame(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, LOAD)
    ip.user_ns.pop("df")
    capsys.readouterr()
    run_ok(ip, LOAD)
    assert "load: reused from run" in capsys.readouterr().out
    run_ok(ip, WRITES)
    _check(ip.user_ns["df"])


def test_a_reused_series_is_written_into(ip, capsys):
    cell = "%%step s\nimport pandas as pd\nser = pd.Series([1.0, 2.0, 3.0], name='x')\n"
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    ip.user_ns.pop("ser")
    capsys.readouterr()
    run_ok(ip, cell)
    assert "s: reused from run" in capsys.readouterr().out
    run_ok(ip, "ser.iloc[0] = 5.0\nser *= 2")
    assert ip.user_ns["ser"].tolist() == [10.0, 4.0, 6.0]


@pytest.mark.slow
def test_a_runner_step_writes_into_its_input_frame(ip):
    run_ok(ip, LOAD)
    run_ok(ip, "%%step change\n" + WRITES + "total = float(df['a'].sum())\n")
    run = run_ok(ip, "%compile_run --quiet")
    assert run.status == "done", run.error


@pytest.mark.slow
def test_a_restored_frame_is_written_into(ip):
    run_ok(ip, LOAD)
    run = run_ok(ip, "%compile_run --quiet")
    assert run.status == "done", run.error
    ip.user_ns.pop("df")
    run_ok(ip, "%restore last")
    run_ok(ip, WRITES)
    _check(ip.user_ns["df"])
