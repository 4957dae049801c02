"""Garbage collection: policies, dry runs, reference counting through lineage and live cache entries, auto gc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers.shell import run_ok
from nbmagic.restore import restore
from nbmagic.store.gc import GcError, Policy, auto_gc, collect, load_policy, parse_policy, parse_size
from nbmagic.store.runs import RunStore

CELLS = [
    "%%pipeline_parameters\nscale = 1\n",
    "%%step load\nimport numpy as np\ndata = np.arange(50_000, dtype='float64')\n",
    "%%step feat\nfeatures = data * scale\n",
    "%%step fit\nweights = float(features.sum())\n",
    "%pipeline_metrics weights\n",
]


@pytest.fixture
def three(ip):
    for cell in CELLS:
        run_ok(ip, cell)
    runs = [run_ok(ip, f"%compile_run --quiet --param scale={s}") for s in (2, 3, 4)]
    assert all(r.status == "done" for r in runs)
    return ip, runs


def _hashes(run, step, name):
    return run.outputs(step)[name]["hash"]


def test_keep_last_frees_only_unreferenced_values(three):
    ip, (r1, r2, r3) = three
    store = RunStore()
    dry = collect(store, Policy(keep_last=1), dry_run=True, grace=0)
    assert [r for r, _, _ in dry.runs] == [r1.id, r2.id]
    assert dry.bytes_freed >= 2 * 400_000  # features of scale 2 and 3 (50k float64 each)
    doomed = {_hashes(r1, "feat", "features"), _hashes(r2, "feat", "features")}
    assert doomed <= {d for d, _ in dry.values}
    assert all(store.objects.exists(d) for d in doomed)  # a dry run removes nothing
    assert {r.id for r in store.list_runs()} == {r1.id, r2.id, r3.id}

    report = collect(store, Policy(keep_last=1), grace=0)
    assert report.bytes_freed == dry.bytes_freed and [r for r, _, _ in report.runs] == [r1.id, r2.id]
    assert [r.id for r in store.list_runs()] == [r3.id]
    assert not any(store.objects.exists(d) for d in doomed)
    assert store.objects.exists(_hashes(r3, "load", "data"))  # made by run 1, still used by run 3
    assert not (store.root / "runs" / r1.id).exists()
    ns: dict = {}
    restore(store, r3.id, namespace=ns)
    assert ns["weights"] == r3.metrics["weights"] and len(ns["data"]) == 50_000
    # the cache entry run 3 reused survives (re-pointed), so a new run still hits it
    again = run_ok(ip, "%compile_run --quiet --param scale=1")
    assert again.steps["load"].status == "cached" and again.steps["feat"].status == "done"


def test_live_cache_entries_and_best_trials_are_kept(three):
    ip, (r1, r2, r3) = three
    store = RunStore()
    conn = store._connection()
    for run in (r1, r2, r3):
        conn.execute("UPDATE runs SET experiment='tune1' WHERE id=?", (run.id,))
    store.set_experiment("tune1", "weights", "minimize")  # run 1 (scale=2) has the smallest weights
    report = collect(store, Policy(keep_last=1), grace=0)
    assert [r for r, _, _ in report.runs] == [r2.id]
    ns: dict = {}
    restore(store, "best", namespace=ns)
    assert ns["scale"] == 2
    report = collect(store, Policy(keep_last=0, keep_best=False), grace=0, keep=[r3.id])
    assert [r.id for r in store.list_runs()] == [r3.id]


def test_older_than_and_size_budget(three):
    ip, (r1, r2, r3) = three
    store = RunStore()
    now = time.time()
    conn = store._connection()
    for run, age in ((r1, 40), (r2, 20), (r3, 1)):
        conn.execute("UPDATE runs SET started=? WHERE id=?", (now - age * 86400, run.id))
    report = collect(store, Policy(older_than=30 * 86400), dry_run=True, grace=0)
    assert [r for r, _, _ in report.runs] == [r1.id] and "older than 30 days" in report.text()
    total = report.store_bytes
    feature_bytes = r1.steps["feat"].outputs["features"]["size"]
    report = collect(store, Policy(max_size=total - feature_bytes // 2), grace=0)  # dropping the oldest run is enough
    assert [r for r, _, _ in report.runs] == [r1.id]
    report = collect(store, Policy(max_size=1), grace=0)  # the newest run of the pipeline is never collected
    assert {r for r, _, _ in report.runs} == {r2.id} and [r.id for r in store.list_runs()] == [r3.id]
    assert "kept over the 1 B budget: 1 run is protected (the newest)" in report.over_budget
    assert report.over_budget.startswith("gc: ") and report.over_budget in report.text()
    kept = {v["hash"] for step in ("load", "feat", "fit") for v in r3.outputs(step).values()}
    assert set(store.objects.iter_hashes()) == kept  # everything else went; everything r3 needs is still there


def test_running_runs_and_fresh_values_are_kept(tmp_path):
    store = RunStore(tmp_path / "s")
    running = store.create_run("p", {}, ["a"])
    orphan = store.objects.put([1, 2, 3], "x")  # written, not recorded yet (a run is mid-step)
    report = collect(store, Policy(keep_last=0), grace=3600)
    assert report.runs == [] and store.objects.exists(orphan.hash)
    store.finish_run(running, "done", {})
    old = time.time() - 7200
    os.utime(store.objects._path(orphan.hash), (old, old))
    report = collect(store, Policy(keep_last=5), grace=3600)  # nothing refers to it and it is old: collected
    assert [d for d, _ in report.values] == [orphan.hash] and not store.objects.exists(orphan.hash)


def test_policy_parsing_and_auto_gc(three, monkeypatch):
    ip, (r1, r2, r3) = three
    store = RunStore()
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("100") == 100
    assert (
        parse_policy("keep_last=3,older_than=2d,max_size=1MB").describe() == "keep_last=3,older_than=2d,max_size=1.0MB"
    )
    with pytest.raises(GcError, match="unknown setting 'keep'"):
        parse_policy("keep=3")
    with pytest.raises(GcError, match="older_than"):
        parse_policy("older_than=soon")
    assert auto_gc(store) is None  # no policy: nothing happens
    run_ok(ip, "%gc --keep-last 2 --set-policy")
    assert load_policy(store).keep_last == 2
    report = auto_gc(store)
    assert [r for r, _, _ in report.runs] == [r1.id]
    assert auto_gc(store) is None  # under the policy now: cheap no-op
    monkeypatch.setenv("NBMAGIC_GC", "keep_last=1")
    assert [r for r, _, _ in auto_gc(store).runs] == [r2.id]
    monkeypatch.setenv("NBMAGIC_GC", "off")
    assert load_policy(store) is None


def test_gc_magic_and_command(three):
    ip, (r1, r2, r3) = three
    report = run_ok(ip, "%gc --keep-last 2 --dry-run")
    assert report.dry_run and [r for r, _, _ in report.runs] == [r1.id] and "would remove 1 runs" in report.text()
    with pytest.raises(Exception, match="give --keep-last"):
        run_ok(ip, "%gc")
    store = RunStore()
    cmd = [sys.executable, "-m", "nbmagic.cli", "gc", "--store", str(store.root)]
    out = subprocess.run(cmd + ["--keep-last", "1", "--dry-run"], capture_output=True, text=True, check=True).stdout
    assert "would remove 2 runs" in out and r1.id in out
    out = subprocess.run(cmd + ["--keep-last", "1"], capture_output=True, text=True, check=True).stdout
    assert "removed 2 runs" in out
    assert [r.id for r in store.list_runs()] == [r3.id]
