"""The store has one door: only nbmagic/store/runs.py speaks SQL; everything else calls its methods."""

from __future__ import annotations

import re
from pathlib import Path

import nbmagic

PACKAGE = Path(nbmagic.__file__).parent
SQL = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE)\b[^\n]*\b(FROM|INTO|SET|WHERE)\b|_connection\(|\._db\(|import sqlite3"
)


def test_only_the_store_facade_speaks_sql():
    speakers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if SQL.search(path.read_text()) and path != PACKAGE / "store" / "runs.py"
    )
    assert speakers == []
    assert SQL.search((PACKAGE / "store" / "runs.py").read_text())  # the pattern does find SQL where it is


def test_the_facade_is_the_store_package_door(tmp_path):
    from nbmagic.store import Store
    from nbmagic.store.runs import RunStore

    assert Store is RunStore
    store = Store(tmp_path / "s")
    run_id = store.create_run("p", {"a": 1}, ["s"])
    store.finish_run(run_id, "done", {"m": 1.0})
    assert [r.id for r in store.runs()] == [run_id] == [store.resolve_run("last")]
    assert store.latest_output("x") is None and store.best_trial("none") is None
