"""A frame the parquet path cannot take (for any reason) is stored with pickle: the run and reuse go on."""

from __future__ import annotations

import pandas as pd

from helpers.shell import run_ok
from nbmagic.restore import state_after
from nbmagic.runtime import marshal
from nbmagic.store.runs import RunStore

BIG_INT_STEP = "%%step s\nimport pandas as pd\ndf = pd.DataFrame({'c': pd.Series([1, 2**63], dtype=object)})\n"


def test_an_int_arrow_cannot_hold_falls_back_to_pickle(tmp_path):
    df = pd.DataFrame({"c": pd.Series([1, 2**63], dtype=object)})  # pyarrow raises OverflowError
    manifest = marshal.save(df, tmp_path, "df")
    assert manifest["format"] == "pickle"
    back = marshal.load(tmp_path, "df")
    assert back["c"].tolist() == [1, 2**63] and back["c"].dtype == object


def test_any_failure_while_checking_parquet_falls_back_to_pickle(tmp_path, monkeypatch):
    from nbmagic.runtime.marshal import parquet

    def broken(obj):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(parquet, "table", broken)
    manifest = marshal.save(pd.DataFrame({"a": [1.5]}), tmp_path, "df")
    assert manifest["format"] == "pickle"


def test_a_run_stores_a_big_int_object_column(ip, capsys):
    run_ok(ip, BIG_INT_STEP)
    run_ok(ip, "%%step t\nn = len(df)\n")
    run = run_ok(ip, "%compile_run --quiet")
    state = state_after(RunStore(), run.id)
    assert "df" in state.items and not state.not_kept, state.not_kept
    assert run.value("n") == 2


def test_reuse_stores_and_reuses_a_big_int_object_column(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, BIG_INT_STEP)
    assert "cannot be reused" not in capsys.readouterr().out
    ip.user_ns.pop("df")
    run_ok(ip, BIG_INT_STEP)
    assert "s: reused from run" in capsys.readouterr().out
    assert ip.user_ns["df"]["c"].tolist() == [1, 2**63]
