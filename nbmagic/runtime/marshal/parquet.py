"""pandas DataFrame/Series as ``value.parquet``, when pyarrow is present and the frame round-trips exactly.

:func:`table` checks both ends of the frame through Arrow and answers None when parquet would give back
anything different (the frame then goes to ``pickle``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import Written, versions

FORMAT = "parquet"
FILE = "value.parquet"


def claims(obj: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and type(obj) in (pd.DataFrame, pd.Series)


def table(obj: Any) -> Any:
    """An Arrow table for obj if parquet will give back an equal frame, else None."""
    import pandas as pd

    try:
        import pyarrow as pa
    except ImportError:
        return None
    df = obj.to_frame(name="__value__") if isinstance(obj, pd.Series) else obj
    if isinstance(obj, pd.Series) and not (obj.name is None or isinstance(obj.name, str)):
        return None
    if (
        not all(isinstance(c, str) for c in df.columns)
        or not df.columns.is_unique
        or obj.attrs
        or not obj.flags.allows_duplicate_labels
        or not isinstance(df.columns, pd.Index)
        or type(df.columns) is not pd.Index
    ):
        return None
    try:
        arrow = pa.Table.from_pandas(df, preserve_index=None)
    except Exception:  # noqa: BLE001 - ArrowException, TypeError, OverflowError (int >= 2**63)...: pickle it
        return None
    for f in arrow.schema:
        if pa.types.is_nested(f.type):
            return None
    # Check on both ends of the frame that Arrow gives back equal values, dtypes and index.
    range_index = type(df.index) is pd.RangeIndex
    k = min(len(df), 256)
    for start in sorted({0, max(len(df) - k, 0)}):
        try:
            back = arrow.slice(start, k).to_pandas()
        except (pa.ArrowException, TypeError, ValueError):
            return None
        want = df.iloc[start : start + k]
        if range_index:
            want, back = want.reset_index(drop=True), back.reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(back, want, check_exact=True, check_freq=False)
        except (AssertionError, TypeError, ValueError):
            return None
    return arrow


def write(obj: Any, directory: Path, algorithm: str, name: str, arrow: Any) -> Written:
    """Write ``arrow`` (from :func:`table`) for obj."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dict_cols = [
        f.name
        for f in arrow.schema
        if not (
            pa.types.is_floating(f.type)
            or pa.types.is_integer(f.type)
            or pa.types.is_boolean(f.type)
            or pa.types.is_temporal(f.type)
        )
    ]
    pq.write_table(
        arrow,
        directory / FILE,
        compression="none",
        use_dictionary=dict_cols,
        write_statistics=False,
        data_page_size=8 << 20,
    )
    meta = {"series": type(obj).__name__ == "Series"}
    if meta["series"]:
        meta["series_name"] = obj.name
    return meta, versions("pandas", "pyarrow"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import pyarrow.parquet as pq

    arrow = pq.read_table(directory / FILE, memory_map=True)
    # one block per column (no consolidation copy) unless the frame is wide enough for that to hurt pandas
    df = arrow.to_pandas(split_blocks=arrow.num_columns <= 100, self_destruct=True)
    del arrow
    if meta.get("series"):
        return df["__value__"].rename(meta.get("series_name"))
    return df
