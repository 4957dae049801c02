"""A shared gc that stops keeps every run of this home: what can stop it is checked before anything is applied
("nothing was removed" is true), and a gc stopped midway (the network) leaves the runs it dropped here to be
imported again by the next sync."""

from __future__ import annotations

import json

import pytest

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store import remote
from nbmagic.store.backends import RemoteError
from nbmagic.store.gc import Policy, collect
from nbmagic.store.objects import StoreError
from nbmagic.store.runs import RunStore


def _plan(name: str, n: int) -> PipelinePlan:
    return PipelinePlan(name, (step("make", f"x = list(range({n}))", outputs=("x",)),), {}, ())


@pytest.fixture
def team(tmp_path, monkeypatch):  # noqa: ANN201
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(_plan("p", n), cache=False) for n in (3, 4)]
    LocalRunner(RunStore(tmp_path / "carol" / "store")).run(_plan("q", 5), cache=False)
    return shared, alice, runs


def _restorable(store: RunStore, run_id: str, n: int) -> bool:
    ns: dict = {}
    restore(store, run_id, namespace=ns)
    return ns["x"] == list(range(n))


def test_a_gc_stopped_by_a_newer_record_removes_nothing_here(team):
    shared, alice, (first, second) = team
    (path,) = [
        p for p in (shared / "runs").glob("*.json") if json.loads(p.read_bytes())["record"]["run"]["pipeline"] == "q"
    ]
    record = dict(json.loads(path.read_bytes())["record"], format=remote.RECORD_FORMAT + 1)
    path.write_bytes(
        json.dumps({"record": record, "sig": remote._sign(alice.remote.key, remote._canonical(record))}).encode()
    )
    with pytest.raises(StoreError, match="nothing was removed"):
        collect(alice, Policy(keep_last=0), shared=True, grace=0)
    assert {r.id for r in alice.list_runs()} == {first.id, second.id}
    assert _restorable(alice, first.id, 3)


def test_runs_dropped_by_a_gc_the_network_stopped_come_back_with_the_next_sync(team, monkeypatch):
    shared, alice, (first, second) = team
    backend = alice.remote.backend
    real_list = backend.list

    def failing_list(prefix, start_after=""):  # noqa: ANN001, ANN202
        if prefix == "quarantine/":  # read after the local gc, before anything is removed from the store
            raise RemoteError("the run store: cannot list quarantine/: connection reset")
        return real_list(prefix, start_after)

    monkeypatch.setattr(backend, "list", failing_list)
    with pytest.raises(RemoteError, match="connection reset"):
        collect(alice, Policy(keep_last=0), shared=True, grace=0)
    monkeypatch.setattr(backend, "list", real_list)
    alice.sync(force=True)
    assert {r.id for r in alice.list_runs()} >= {first.id, second.id}
    assert _restorable(alice, first.id, 3)


def _quarantine(shared) -> list:  # noqa: ANN001
    return sorted(p.name for p in (shared / "quarantine").rglob("*")) if (shared / "quarantine").exists() else []


def test_a_gc_with_a_mistyped_key_refuses_and_moves_nothing(team, tmp_path, monkeypatch):
    shared, _alice, _runs = team
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 31 + "K")
    with pytest.raises(StoreError) as caught:
        collect(RunStore(tmp_path / "typo" / "store"), Policy(keep_last=0), shared=True, grace=0)
    line = str(caught.value)
    assert "$NBMAGIC_STORE_KEY verifies 0 of the 3 signed run records" in line and "\n" not in line
    assert "nothing was moved or removed" in line
    assert _quarantine(shared) == []
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    assert len(RunStore(tmp_path / "dave" / "store").list_runs()) == 3


def test_a_gc_whose_key_verifies_fewer_records_than_it_cannot_refuses(team, tmp_path, monkeypatch):
    shared, _alice, _runs = team
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)  # another key, which has signed one run of its own
    typo = RunStore(tmp_path / "typo" / "store")
    LocalRunner(typo).run(_plan("r", 6), cache=False)
    with pytest.raises(StoreError, match=r"verifies 1 of the 4 signed run records"):
        collect(typo, Policy(keep_last=0), shared=True, grace=0)
    assert _quarantine(shared) == []


def test_a_gc_with_the_team_key_still_sets_a_forged_record_aside(team, tmp_path):
    shared, alice, _runs = team
    (path,) = [
        p for p in (shared / "runs").glob("*.json") if json.loads(p.read_bytes())["record"]["run"]["pipeline"] == "q"
    ]
    body = json.loads(path.read_bytes())
    path.write_bytes(json.dumps({**body, "sig": "0" * 64}).encode())  # one forged signature among good ones
    report = collect(alice, Policy(keep_last=50), shared=True, grace=0)
    assert "set aside 1 unreadable or unverifiable run record(s)" in report.notes[-1]
