"""Run history: --where parsing (no eval), sorting, limits, compare, `nbmagic runs`, old index migration."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from nbmagic.store.history import HistoryError, RunTable, compare, parse_where, query
from nbmagic.store.lineage import code_hash
from nbmagic.store.runs import SCHEMA, RunStore


def make_run(
    store: RunStore,
    params: dict,
    metrics: dict,
    *,
    code: str = "m = 1",
    started: float | None = None,
    status: str = "done",
    pipeline: str = "demo",
    value: object = 1,
) -> str:
    run_id = store.create_run(pipeline, params, ["prep", "train"], upstream={"prep": [], "train": ["prep"]})
    data = store.objects.put([1, 2, 3], "data")
    out = store.objects.put(value, "m")
    store.set_step(
        run_id, "prep", "done", code_hash=code_hash("data = [1, 2, 3]"), cache_key="k-prep", started=1, ended=2
    )
    store.record_execution(run_id, "prep", {}, {"data": data.to_dict()})
    store.set_step(
        run_id,
        "train",
        "done",
        code_hash=code_hash(code),
        cache_key=f"k-{code}-{params}",
        started=2,
        ended=3,
        properties={"parameters": params},
    )
    store.record_execution(run_id, "train", {"data": data.to_dict()}, {"m": out.to_dict()})
    store.finish_run(run_id, status, metrics)
    if started is not None:
        store._connection().execute("UPDATE runs SET started=?, ended=? WHERE id=?", (started, started + 5, run_id))
    return run_id


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "store")
    now = time.time()
    ids = [
        make_run(store, {"lr": 0.1, "kind": "svm"}, {"val_loss": 0.5}, started=now - 3600 * 5),
        make_run(store, {"lr": 0.01, "kind": "mlp"}, {"val_loss": 0.2}, started=now - 3600 * 3, code="m = 2", value=2),
        make_run(
            store, {"lr": 0.001, "kind": "mlp"}, {"val_loss": 0.25, "acc": 0.9}, started=now - 60, status="failed"
        ),
        make_run(store, {"lr": 0.1}, {}, started=now - 30, pipeline="other"),
    ]
    store.ids = ids
    return store


def test_where_filters_and_sort(store):
    ids = store.ids
    runs, total = query(store, "val_loss<0.3", "val_loss")
    assert [r.id for r in runs] == [ids[1], ids[2]] and total == 2
    runs, _ = query(store, ["kind=mlp", "status=done"])
    assert [r.id for r in runs] == [ids[1]]
    runs, _ = query(store, "lr>=0.01 and pipeline~dem", "-lr")
    assert [r.id for r in runs] == [ids[0], ids[1]]
    runs, _ = query(store, "age<2h")
    assert {r.id for r in runs} == {ids[2], ids[3]}
    runs, _ = query(store, "param.lr=0.1", "-started")
    assert [r.id for r in runs] == [ids[3], ids[0]]
    runs, _ = query(store, None, "val_loss")  # runs without the metric sort last
    assert [r.id for r in runs][-1] == ids[3]
    runs, total = query(store, None, None, 2)
    assert len(runs) == 2 and total == 4 and runs[0].id == ids[3]  # newest first by default
    assert query(store, "kind='svm'")[0][0].id == ids[0]
    assert query(store, "val_loss<abc")[1] == 0  # a number and a string are not ordered: no match, no crash


@pytest.mark.parametrize("bad", ["val_loss", "__import__('os').system('echo hi')<1", "val_loss<<1", "<3"])
def test_where_rejects_what_it_cannot_parse(bad):
    with pytest.raises(HistoryError, match="--where"):
        parse_where(bad)


def test_table_text_and_html(store):
    runs, total = query(store, None, None, 3)
    table = RunTable(runs, total)
    text = table.text()
    assert "val_loss=0.25" in text and "lr=0.001" in text and "1 more runs" in text and "0/2" in text
    assert "<table>" in table._repr_html_() and "kind=mlp" in table._repr_html_()


def test_compare_reports_parameters_metrics_and_code(store):
    ids = store.ids
    diff = compare(store, ids[0], ids[1])
    assert diff.parameters == {"lr": (0.1, 0.01), "kind": ("svm", "mlp")}
    assert diff.metrics == {"val_loss": (0.5, 0.2)}
    steps = {s.step: s for s in diff.steps}
    assert not steps["prep"].code_differs and steps["prep"].values == []
    assert steps["train"].code_differs and steps["train"].values == ["m"]
    text = diff.text()
    assert "train: code differs" in text and "prep: same" in text and "(-0.3)" in text
    same_code = {s.step: s for s in compare(store, ids[0], ids[2]).steps}["train"]
    assert not same_code.code_differs and same_code.key_differs and same_code.values == []
    assert "same code; inputs, parameters" in compare(store, ids[0], ids[2]).text()


def test_nbmagic_runs_command(store):
    ids = store.ids
    cmd = [sys.executable, "-m", "nbmagic.cli", "runs", "--store", str(store.root)]
    out = subprocess.run(
        cmd + ["--where", "val_loss<0.3", "--sort", "-val_loss"], capture_output=True, text=True, check=True
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("id") and ids[2] in lines[1] and ids[1] in lines[2] and len(lines) == 3
    data = json.loads(
        subprocess.run(cmd + ["--json", "--limit", "0"], capture_output=True, text=True, check=True).stdout
    )
    assert len(data) == 4
    out = subprocess.run(cmd + ["--compare", ids[0], ids[1]], capture_output=True, text=True, check=True).stdout
    assert "lr: 0.1 -> 0.01" in out and "code differs" in out
    bad = subprocess.run(cmd + ["--where", "lr<<1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--where" in bad.stderr


def test_magic_runs(ip, store, monkeypatch):
    monkeypatch.setenv("NBMAGIC_HOME", str(store.root.parent))
    table = ip.run_line_magic("runs", "--where 'val_loss<0.3' --sort -val_loss")
    assert [r.id for r in table.runs] == [store.ids[2], store.ids[1]]
    diff = ip.run_line_magic("runs", f"--compare {store.ids[0]} {store.ids[1]}")
    assert diff.parameters["lr"] == (0.1, 0.01)


def test_an_old_index_is_migrated_and_stays_readable(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    conn = sqlite3.connect(root / "index.sqlite")
    conn.executescript(SCHEMA)  # the first schema: no dag/environment columns, user_version 0
    conn.execute(
        "INSERT INTO runs(id, pipeline, status, parameters, metrics, started, steps) VALUES"
        " ('20200101-000000-aaaaaa', 'p', 'done', '{\"a\": 1}', '{\"x\": 2.0}', 1.0, 1)"
    )
    conn.execute("INSERT INTO executions(run_id, step, state) VALUES ('20200101-000000-aaaaaa', 's', 'done')")
    conn.commit()
    conn.close()
    store = RunStore(root)
    assert store._connection().execute("PRAGMA user_version").fetchone()[0] >= 2
    assert [r.id for r in store.list_runs()] == ["20200101-000000-aaaaaa"]
    assert store.run_dag("20200101-000000-aaaaaa") == {"s": []}
    assert query(store, "x=2")[1] == 1
    RunStore(root)  # opening again (already migrated) is a no-op
