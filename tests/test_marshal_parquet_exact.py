"""parquet holds a frame only when every row comes back exactly (type and value); anything else goes to pickle."""

from __future__ import annotations

import datetime
import decimal
import zoneinfo

import numpy as np
import pandas as pd
import pytest

from helpers.exact import assert_exact
from helpers.shell import run_ok
from nbmagic.runtime import marshal
from nbmagic.store.runs import RunStore

N = 1000
NEG_NAN = np.frombuffer(np.uint64(0xFFF8000000000000).tobytes(), np.float64)[0]  # what 0/0 gives on x86
PAYLOAD_NAN = np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), np.float64)[0]


def _at_500(common, odd, dtype=None) -> pd.Series:
    values = [common] * N
    values[500] = odd
    return pd.Series(values, dtype=dtype)


def _sub(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def _save_load(obj, tmp_path):
    manifest = marshal.save(obj, tmp_path, "v")
    return manifest["format"], marshal.load(tmp_path, "v")


# Frames parquet holds: each claimed dtype, with its edge values spread over every row.
rng = np.random.default_rng(0)
EXACT = {
    "str": pd.Series([f"s{i}\u00e9\u4e2d" if i % 7 else ("" if i % 2 else None) for i in range(N)]),
    "str-nul": pd.Series(["a\x00b", "\U0001f600"] * (N // 2)),
    "bytes": pd.Series([bytes([i % 256]) * (i % 5) for i in range(N)]),
    "date": pd.Series([datetime.date(1, 1, 1) + datetime.timedelta(days=i * 3600) for i in range(N)]),
    "date-none": _at_500(datetime.date(9999, 12, 31), None),
    "time": pd.Series([datetime.time(i % 24, i % 60, i % 60, i * 997 % 1_000_000) for i in range(N)]),
    "decimal": pd.Series([decimal.Decimal(i - 500).scaleb(-3) for i in range(N)]),
    "decimal-none": _at_500(decimal.Decimal("1.5"), None),
    "all-none": pd.Series([None] * N, dtype=object),
    "int": pd.Series(rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, N, dtype=np.int64)),
    "uint64": pd.Series(np.full(N, np.iinfo(np.uint64).max, dtype=np.uint64)),
    "int8": pd.Series(np.arange(N).astype(np.int8)),
    "bool": pd.Series(rng.random(N) > 0.5),
    "float": pd.Series(np.r_[rng.standard_normal(N - 6), np.inf, -np.inf, -0.0, np.nan, NEG_NAN, PAYLOAD_NAN]),
    "float32": pd.Series(np.r_[rng.standard_normal(N - 3), -0.0, np.nan, NEG_NAN].astype(np.float32)),
    "float16": pd.Series(np.array([1.0, np.nan, -np.nan, 65504.0, 1e-7, -0.0] * (N // 6) + [0.0] * 4, np.float16)),
    "float16-nan": pd.Series(np.array([1.0, np.nan] * (N // 2), np.float16)),
    "datetime-ns": pd.Series(pd.date_range("1700-01-01", periods=N, freq="7919min").as_unit("ns")).where(
        np.arange(N) != 500
    ),
    "datetime-ms": pd.Series(np.arange(-(10**14), 10**14, 2 * 10**11, dtype="datetime64[ms]")[:N]),
    "timedelta-s": pd.Series(np.arange(-(10**12), 10**12, 2 * 10**9, dtype="timedelta64[s]")[:N]),
    "timedelta": pd.Series(pd.to_timedelta(rng.integers(-(10**15), 10**15, N), unit="ns")),
    "tz-pytz": pd.Series(pd.date_range("2020-03-28", periods=N, freq="17min", tz="Europe/Paris")),
    "tz-utc": pd.Series(pd.date_range("2020-01-01", periods=N, freq="h", tz=datetime.UTC)),
    "categorical": pd.Series(pd.Categorical(rng.choice(["red", "green", "blue"], N))),
    "Int64": pd.Series(pd.array([i if i % 3 else None for i in range(N)], dtype="Int64")),
    "boolean": pd.Series(pd.array([bool(i % 2) if i % 3 else None for i in range(N)], dtype="boolean")),
    "Float64": pd.Series(pd.array([i / 3 if i % 3 else None for i in range(N)], dtype="Float64")),
    "string": pd.Series(pd.array([f"s{i}" if i % 3 else None for i in range(N)], dtype="string")),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_claimed_dtypes_come_back_exact_in_every_row(name, tmp_path):
    df = pd.DataFrame({name: EXACT[name]})
    fmt, back = _save_load(df, tmp_path)
    assert fmt == "parquet"
    assert_exact(back, df)


def test_a_string_index_a_multiindex_and_a_series_come_back_exact(tmp_path):
    df = pd.DataFrame({"x": np.arange(N)}, index=pd.Index([f"r{i}" for i in range(N)], name="key"))
    fmt, back = _save_load(df, _sub(tmp_path, "a"))
    assert fmt == "parquet"
    assert_exact(back, df)
    multi = df.set_index(pd.MultiIndex.from_arrays([np.arange(N) % 3, df.index], names=["g", "k"]))
    fmt, back = _save_load(multi, _sub(tmp_path, "b"))
    assert fmt == "parquet"
    assert_exact(back, multi)
    s = EXACT["tz-utc"].rename("when")
    fmt, back = _save_load(s, _sub(tmp_path, "c"))
    assert fmt == "parquet" and back.dt.tz is datetime.UTC
    assert_exact(back, s)


# Frames parquet would change, each in one middle row only (row 500 of 1000): pickle keeps them exact.
CHANGED = {
    "datetime-in-dates": _at_500(datetime.date(2020, 1, 1), datetime.datetime(2020, 1, 1, 12, 30)),
    "decimal-scales": _at_500(decimal.Decimal("1.5"), decimal.Decimal("1.125")),
    "decimal-minus-zero": _at_500(decimal.Decimal("1.5"), decimal.Decimal("-0.0")),
    "decimal-nan": _at_500(decimal.Decimal("1.5"), decimal.Decimal("NaN")),
    "decimal-infinity": _at_500(decimal.Decimal("1.5"), decimal.Decimal("-Infinity")),
    "nan-in-strings": _at_500("a", float("nan")),
    "na-in-strings": _at_500("a", pd.NA),
    "numpy-str": _at_500("x", np.str_("y"), dtype=object),
    "bytes-subclass": _at_500(b"x", np.bytes_(b"y"), dtype=object),
    "aware-time": _at_500(datetime.time(1), datetime.time(1, tzinfo=datetime.UTC)),
    "time-fold": _at_500(datetime.time(1), datetime.time(1, fold=1)),
    "numpy-str-category": pd.Series(pd.Categorical(["a"] * 500 + [np.str_("b")] * 500)),
    "masked-float-nan": pd.Series(
        pd.arrays.FloatingArray(np.r_[np.ones(500), np.nan, np.ones(499)], np.zeros(N, dtype=bool))
    ),
    "numpy-str-in-string": pd.Series(pd.array(["a"] * 500 + [np.str_("b")] * 500, dtype="string")),
    "zoneinfo": pd.Series(pd.date_range("2020", periods=N, freq="h", tz=zoneinfo.ZoneInfo("Europe/Paris"))),
    "datetime-s": pd.Series(np.arange(-(10**12), 10**12, 2 * 10**9, dtype="datetime64[s]")[:N]),  # parquet: ms
    "categorical-int": pd.Series(pd.Categorical(rng.choice([3, 1, 2], N), ordered=True)),  # parquet: int64
    "tz-s": pd.Series(pd.date_range("2020", periods=N, freq="h", tz="UTC").as_unit("s")),
    "fixed-offset": pd.Series(
        pd.date_range("2020", periods=N, freq="h", tz=datetime.timezone(datetime.timedelta(hours=2)))
    ),
}


@pytest.mark.parametrize("name", list(CHANGED))
def test_a_frame_parquet_would_change_in_one_middle_row_goes_to_pickle_exact(name, tmp_path):
    df = pd.DataFrame({name: CHANGED[name]})
    fmt, back = _save_load(df, tmp_path)
    assert fmt == "pickle"
    assert_exact(back, df)


@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({np.str_("a"): [1]}),
        pd.DataFrame({"a": range(N)}, index=pd.Index(list(_at_500("r", float("nan"))), dtype=object)),
        pd.DataFrame({"a": range(N)}, index=pd.Index(["r"] * 500 + [np.str_("s")] * 500, dtype=object)),
        pd.DataFrame({"a": [1]}, index=pd.Index([1], name=np.str_("k"))),
        pd.DataFrame({"a": range(N)}, index=pd.Index(np.r_[np.zeros(500), NEG_NAN, np.ones(499)])),
        pd.Series([1.0], name=np.str_("s")),
    ],
    ids=[
        "numpy-str-column",
        "nan-in-string-index",
        "numpy-str-index",
        "numpy-str-index-name",
        "neg-nan-index",
        "numpy-str-series-name",
    ],
)
def test_labels_parquet_would_change_go_to_pickle(frame, tmp_path):
    fmt, back = _save_load(frame, tmp_path)
    assert fmt == "pickle"
    assert_exact(back, frame)


DATES_STEP = (
    "%%step s\nimport datetime, pandas as pd\n"
    "vals = [datetime.date(2020, 1, 1)] * 1000\nvals[500] = datetime.datetime(2020, 1, 1, 12, 30)\n"
    "df = pd.DataFrame({'when': vals})\n"
)


def test_reuse_gives_back_a_datetime_among_dates(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, DATES_STEP)
    for name in ("df", "vals"):
        ip.user_ns.pop(name)
    capsys.readouterr()
    run_ok(ip, DATES_STEP)
    assert "s: reused from run" in capsys.readouterr().out
    assert repr(ip.user_ns["df"]["when"][500]) == "datetime.datetime(2020, 1, 1, 12, 30)"


def test_a_run_step_reads_the_datetime_among_dates(ip):
    run_ok(ip, DATES_STEP)
    run_ok(ip, "%%step t\nhour = df['when'][500].hour\n")
    run = run_ok(ip, "%compile_run --quiet")
    assert run.value("hour") == 12
    assert RunStore().list_runs()[0].id == run.id
