"""Restart and Run All with and without ``%pipeline_config --reuse``: the kernel's values after each, compared."""

from __future__ import annotations

import pickle
from pathlib import Path

from helpers.fidelity import execute, text_of, write_notebook

_DUMP = """import pickle as _pickle
with open({path!r}, "wb") as _f:
    _pickle.dump({{n: globals()[n] for n in {names!r}}}, _f)
"""


def same(a, b) -> bool:
    """Equal values: frames and arrays by content, models by their pickled state, the rest by ``==``."""
    import joblib
    import numpy as np
    import pandas as pd

    if isinstance(a, (pd.DataFrame, pd.Series)):
        return (
            isinstance(b, type(a))
            and a.equals(b)
            and list(getattr(a, "columns", [])) == list(getattr(b, "columns", []))
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if type(a).__eq__ is not object.__eq__:
        try:
            return type(a) is type(b) and bool(a == b)
        except Exception:  # noqa: BLE001 - fall back to the content hash
            pass
    return joblib.hash(a) == joblib.hash(b)


def run_all(folder: Path, monkeypatch, cells: list, names: list[str], *, reuse: bool) -> tuple[dict, list[str]]:
    """A fresh kernel runs ``%load_ext nbmagic``, (``%pipeline_config --reuse``), ``cells``, then keeps ``names``.

    Returns the kept values and each of ``cells``' printed text (the cells' own, in order)."""
    dump = folder / "values.pickle"
    head = ["%load_ext nbmagic", "%pipeline_config --reuse" if reuse else "# reuse off"]
    path = write_notebook(folder / "fidelity.ipynb", [*head, *cells, _DUMP.format(path=str(dump), names=names)])
    nb = execute(path, monkeypatch)
    with open(dump, "rb") as f:
        values = pickle.load(f)
    return values, [text_of(cell) for cell in nb.cells[len(head) : len(head) + len(cells)]]


def differences(expected: dict, found: dict) -> list[str]:
    """Names whose values differ (an empty list: the same values)."""
    return [name for name in expected if name not in found or not same(expected[name], found[name])]
