"""pandas DataFrame/Series as ``value.parquet``, when pyarrow is present and the frame round-trips exactly.

:func:`table` answers None when parquet would give back anything different, in any row (the frame then
goes to ``pickle``).
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
    """An Arrow table for obj if parquet gives back exactly obj (every value, with its type), else None.

    Numeric, bool, datetime and timedelta columns are exact in Arrow (same bits; the NaNs parquet would
    canonicalise are kept as values). Object columns (and object index levels, string and categorical
    columns) are checked row by row: every element's type must be one Arrow gives back unchanged for the
    column's Arrow type (``str`` for strings, ``date`` for dates, ``Decimal`` of the column's scale...).
    Other dtypes go to pickle. Both ends of the frame are then read back through Arrow and compared
    (dtypes, index, names).
    """
    import pandas as pd

    try:
        import pyarrow as pa
    except ImportError:
        return None
    df = obj.to_frame(name="__value__") if isinstance(obj, pd.Series) else obj
    if isinstance(obj, pd.Series) and not (obj.name is None or type(obj.name) is str):
        return None
    if (
        not all(type(c) is str for c in df.columns)
        or not df.columns.is_unique
        or obj.attrs
        or not obj.flags.allows_duplicate_labels
        or not isinstance(df.columns, pd.Index)
        or type(df.columns) is not pd.Index
        or not all(n is None or type(n) is str for n in (*df.index.names, df.columns.name))
        or getattr(df.index, "freq", None) is not None  # a DatetimeIndex's or TimedeltaIndex's freq: Arrow drops it
    ):
        return None
    try:
        arrow = pa.Table.from_pandas(df, preserve_index=None)
    except Exception:  # noqa: BLE001 - ArrowException, TypeError, OverflowError (int >= 2**63)...: pickle it
        return None
    for f in arrow.schema:
        if pa.types.is_nested(f.type):
            return None
    arrow = _rows_exact(df, arrow)
    if arrow is None:
        return None
    # Check on both ends of the frame that Arrow gives back equal values, dtypes and index.
    range_index = type(df.index) is pd.RangeIndex
    k = min(len(df), 256)
    for start in sorted({0, max(len(df) - k, 0)}):
        try:
            back = _restore_tz(arrow.slice(start, k).to_pandas(), utc_columns(df))
        except (pa.ArrowException, TypeError, ValueError):
            return None
        want = df.iloc[start : start + k]
        if range_index:
            want, back = want.reset_index(drop=True), back.reset_index(drop=True)
        try:
            pd.testing.assert_frame_equal(back, want, check_exact=True, check_freq=False)
        except (AssertionError, TypeError, ValueError):
            return None
        if _tz_types(back) != _tz_types(want):
            return None
    return arrow


def _rows_exact(df: Any, arrow: Any) -> Any:
    """arrow if every row of df comes back exact (float columns with non-canonical NaNs re-encoded), else None."""
    import numpy as np
    import pyarrow as pa

    for i, name in enumerate(df.columns):
        col = df.iloc[:, i]
        field = arrow.schema.field(name)
        if col.dtype.kind == "f" and isinstance(col.dtype, np.dtype):
            values = col.to_numpy()
            if not _canonical_nans(values):  # Arrow would turn them into nulls, read back as canonical NaNs
                arrow = arrow.set_column(i, field, pa.array(values, type=field.type, from_pandas=False))
        elif not _exact(col, field.type):
            return None
    index_columns = (arrow.schema.pandas_metadata or {}).get("index_columns", [])
    for level, entry in enumerate(index_columns):
        if isinstance(entry, str):  # a RangeIndex is a dict: exact by construction
            values = df.index.get_level_values(level)
            kind = values.dtype.kind if isinstance(values.dtype, np.dtype) else ""
            if kind == "f":
                if not _canonical_nans(values.to_numpy()):
                    return None
            elif not _exact(values, arrow.schema.field(entry).type):
                return None
    return arrow


def _exact(values: Any, arrow_type: Any) -> bool:
    """Whether Arrow gives back every element of a pandas Series or Index (not float numpy) unchanged."""
    import numpy as np
    import pandas as pd

    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "biuMm":
            return True
        return dtype.kind == "O" and _exact_objects(values.to_numpy(), arrow_type)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return True  # int64 instants; the tz object's type is compared with what comes back
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        if cats.dtype.kind == "f":
            return True  # categories hold no NaN
        return _exact(cats, arrow_type.value_type)  # codes are ints
    array = values.array
    if isinstance(array, pd.arrays.FloatingArray):
        return not np.isnan(array._data[~array._mask]).any()  # a NaN that is not NA would come back as NA
    if isinstance(array, (pd.arrays.IntegerArray, pd.arrays.BooleanArray)):
        return True
    if isinstance(dtype, pd.StringDtype) and dtype.na_value is pd.NA:
        if dtype.storage != "python":
            return True  # already Arrow strings
        present = array._ndarray[~pd.isna(array._ndarray)]
        return set(map(type, present)) <= {str}
    return False


def _exact_objects(values: Any, arrow_type: Any) -> bool:
    """Whether every element of an object array comes back from Arrow's ``arrow_type`` with its type and value.

    Strings, bytes and dates convert losslessly, so checking each element's type (exactly ``str``, not
    ``numpy.str_``; ``date``, not ``datetime``; ``None``, not NaN) is checking its value. Decimals come back
    with the column's scale, so each must have that exponent; times lose tzinfo and fold.
    """
    import datetime
    import decimal
    import operator

    import pyarrow as pa

    types = set(map(type, values))
    none = type(None)
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return types <= {str, none}
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return types <= {bytes, none}
    if pa.types.is_date32(arrow_type):
        return types <= {datetime.date, none}
    if pa.types.is_null(arrow_type):
        return types <= {none}
    if pa.types.is_time64(arrow_type):
        return types <= {datetime.time, none} and all(v.tzinfo is None and v.fold == 0 for v in values if v is not None)
    if pa.types.is_decimal(arrow_type):
        if not types <= {decimal.Decimal, none}:
            return False
        present = [v for v in values if v is not None] if none in types else values
        quantum = decimal.Decimal(1).scaleb(-arrow_type.scale)  # same exponent: no NaN, no Infinity either
        return all(map(quantum.same_quantum, present)) and not any(
            map(decimal.Decimal.is_signed, filter(operator.not_, present))  # -0 comes back as 0
        )
    return False


def _canonical_nans(values: Any) -> bool:
    """Whether every NaN in a float array has the bits Arrow gives back for a null: those of ``numpy.nan``
    (x86 arithmetic gives -nan); for float16 Arrow fills another NaN, so any NaN there counts as not canonical."""
    import numpy as np

    nan = np.isnan(values)
    if not nan.any():
        return True
    if values.dtype.itemsize == 2:
        return False
    bits = np.dtype(f"u{values.dtype.itemsize}")
    return bool((values[nan].view(bits) == np.array(np.nan, values.dtype).view(bits)).all())


def utc_columns(df: Any) -> list[str]:
    """Columns whose tz is ``datetime.timezone.utc`` (Arrow gives back pytz's UTC: :func:`read` puts it back)."""
    import datetime

    import pandas as pd

    return [
        c
        for c, dtype in df.dtypes.items()
        if isinstance(dtype, pd.DatetimeTZDtype) and dtype.tz is datetime.timezone.utc
    ]


def _restore_tz(df: Any, columns: list[str]) -> Any:
    import datetime

    for c in columns:
        df[c] = df[c].dt.tz_convert(datetime.timezone.utc)
    return df


def _tz_types(df: Any) -> list:
    """The type of each tz object in df's columns and index levels (equal dtypes may hold other tz types)."""
    import pandas as pd

    dtypes = [*df.dtypes, *(df.index.get_level_values(i).dtype for i in range(df.index.nlevels))]
    return [type(d.tz) for d in dtypes if isinstance(d, pd.DatetimeTZDtype)]


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
    # Parquet has no unit for some Arrow types (timestamp[s] is read back as timestamp[ms]): pickle those
    if pq.read_schema(directory / FILE).remove_metadata() != arrow.schema.remove_metadata():
        raise ValueError("parquet would read back other column types")
    meta = {"series": type(obj).__name__ == "Series"}
    if meta["series"]:
        meta["series_name"] = obj.name
    utc = utc_columns(obj.to_frame(name="__value__") if meta["series"] else obj)
    if utc:
        meta["utc_columns"] = utc
    return meta, versions("pandas", "pyarrow"), {}


def read(directory: Path, meta: dict, mmap: bool) -> Any:
    import pyarrow.parquet as pq

    arrow = pq.read_table(directory / FILE, memory_map=True)
    # consolidated blocks, as pandas' own read_parquet and a frame built from columns have: Arrow copies the columns
    # into writable arrays pandas owns (one copy, in threads); zero-copy columns would be read-only Arrow memory
    df = arrow.to_pandas(split_blocks=False, self_destruct=True)
    del arrow
    df = _writable(df)
    _restore_tz(df, meta.get("utc_columns", []))
    if meta.get("series"):
        return df["__value__"].rename(meta.get("series_name"))
    return df


def _writable(df: Any) -> Any:
    """df with what Arrow still hands out read-only (a categorical's codes, an index's values) copied, so that
    writing into it works as on a frame the notebook made; a deep copy if pandas' blocks cannot be reached."""
    import numpy as np
    import pandas as pd

    try:
        blocks = df._mgr.blocks
        for block in blocks:
            values = block.values
            data = values if isinstance(values, np.ndarray) else getattr(values, "_ndarray", None)
            if isinstance(data, np.ndarray) and not data.flags.writeable:
                block.values = values.copy()
    except (AttributeError, TypeError):  # another pandas' internals: copy it all, as pandas does
        return df.copy(deep=True)
    index = df.index
    if not isinstance(index, (pd.RangeIndex, pd.MultiIndex)):
        data = getattr(index, "_data", None)
        data = data if isinstance(data, np.ndarray) else getattr(data, "_ndarray", None)
        if isinstance(data, np.ndarray) and not data.flags.writeable:
            df.index = index.copy(deep=True)
    return df
