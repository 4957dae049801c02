"""Strict equality for pandas values: every element with its type and exact representation, float bits included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _elements(values: Any) -> list:
    return [(type(v), repr(v), getattr(v, "tzinfo", None).__class__, getattr(v, "fold", None)) for v in values]


def _array_key(values: Any) -> Any:
    array = np.asarray(values) if isinstance(values.dtype, np.dtype) else None
    if array is not None and array.dtype.kind in "biufcMm":
        return (str(array.dtype), array.tobytes())  # same bits: -0.0, NaN payloads, NaT
    dtype = values.dtype
    tz = type(getattr(dtype, "tz", None))
    if isinstance(dtype, pd.CategoricalDtype):
        return (str(dtype), tz, _array_key(dtype.categories), np.asarray(values.array.codes).tobytes())
    inner = getattr(values.array, "_data", None)
    if inner is not None and isinstance(inner, np.ndarray):  # masked arrays: the values under the mask too
        return (str(dtype), inner[~values.array._mask].tobytes(), values.array._mask.tobytes())
    return (str(dtype), tz, _elements(values.array if hasattr(values, "array") else values))


def assert_exact(back: Any, want: Any) -> None:
    """back is want: same type, dtypes, names, index and every element (type, repr, tzinfo type, fold, bits)."""
    assert type(back) is type(want)
    if isinstance(want, pd.Series):
        assert (type(back.name), back.name) == (type(want.name), want.name)
        back, want = back.to_frame(name="__v__"), want.to_frame(name="__v__")
    assert _elements(back.columns) == _elements(want.columns)
    assert _elements(back.index.names) == _elements(want.index.names)
    assert type(back.index) is type(want.index)
    for level in range(want.index.nlevels):
        assert _array_key(back.index.get_level_values(level)) == _array_key(want.index.get_level_values(level))
    for i in range(want.shape[1]):
        assert _array_key(back.iloc[:, i]) == _array_key(want.iloc[:, i]), want.columns[i]
