"""The automatic gc of a home on a shared store keeps the team's runs listed: it drops only this home's copies of
their values (a restore pulls them again), never their index rows, which a sync would not bring back."""

from __future__ import annotations

import os
import time

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.gc import auto_gc
from nbmagic.store.runs import RunStore


def _plan(name: str, n: int) -> PipelinePlan:
    return PipelinePlan(name, (step("make", f"x = list(range({n}))", outputs=("x",)),), {}, ())


def _restored(store: RunStore, run_id: str) -> list:
    ns: dict = {}
    restore(store, run_id, namespace=ns)
    return ns["x"]


def test_the_automatic_gc_keeps_the_teams_runs_listed_and_restorable(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    bob = RunStore(tmp_path / "bob" / "store")
    ids = [LocalRunner(bob).run(_plan("p", n), cache=False).id for n in (3, 4, 5)]
    alice = RunStore(tmp_path / "alice" / "store")
    assert {r.id for r in alice.list_runs()} == set(ids)
    assert _restored(alice, ids[0]) == [0, 1, 2]  # pulled into alice's home
    pulled = set(alice.objects.iter_hashes())
    assert pulled
    old = time.time() - 120  # pulled two minutes ago: past gc's grace for young values
    for digest in pulled:
        os.utime(alice.objects._path(digest), (old, old))
    monkeypatch.setenv("NBMAGIC_GC", "keep_last=2")
    LocalRunner(alice).run(_plan("q", 6), cache=False)  # alice's own run; her automatic gc follows
    assert not pulled & set(alice.objects.iter_hashes()), "this home's copy of the old team value is gone"
    alice.sync(force=True)
    assert set(ids) <= {r.id for r in alice.list_runs()}
    assert _restored(alice, ids[0]) == [0, 1, 2]  # pulled again
    assert set(ids) <= {r.id for r in RunStore(tmp_path / "carol" / "store").list_runs()}


def test_the_automatic_gc_still_drops_runs_only_this_home_has(tmp_path, monkeypatch):
    monkeypatch.delenv("NBMAGIC_STORE_URI", raising=False)
    home = RunStore(tmp_path / "solo" / "store")
    ids = [LocalRunner(home).run(_plan("p", n), cache=False).id for n in (3, 4, 5)]
    monkeypatch.setenv("NBMAGIC_GC", "keep_last=1")
    report = auto_gc(home)
    assert report is not None and {run_id for run_id, *_ in report.runs} == set(ids[:2])
    assert [r.id for r in home.list_runs()] == [ids[2]]
