"""Run records of a newer format, correctly signed, on a shared folder: an older nbmagic neither shows nor
removes them; its gc stops with one line, its sync says to upgrade and reads them again once upgraded."""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.store_homes import keyed_plan, shared_folder
from nbmagic.run.local import LocalRunner
from nbmagic.store import remote
from nbmagic.store.gc import Policy, collect
from nbmagic.store.objects import StoreError
from nbmagic.store.remote import segment_bytes
from nbmagic.store.runs import RunStore


@pytest.fixture
def shared(tmp_path, monkeypatch):
    return shared_folder(tmp_path, monkeypatch)


def _newer(body: dict, key: bytes) -> dict:
    record = dict(body["record"], format=remote.RECORD_FORMAT + 1)
    return {"record": record, "sig": remote._sign(key, remote._canonical(record))}


def _rewrite_loose(folder, key: bytes) -> list[str]:
    names = []
    for p in sorted((folder / "runs").glob("*.json")):
        p.write_bytes(json.dumps(_newer(json.loads(p.read_bytes()), key)).encode())
        names.append(p.name)
    assert names
    return names


def _tree(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and "locks" not in p.parts}


def test_a_loose_record_of_a_newer_format_stops_gc_and_is_not_quarantined(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    LocalRunner(alice).run(keyed_plan(), cache=False)
    names = _rewrite_loose(shared, alice.remote.key)
    before = _tree(shared)
    with pytest.raises(StoreError, match="newer nbmagic") as caught:
        collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    assert "\n" not in str(caught.value) and "nothing was removed" in str(caught.value)
    assert sorted(p.name for p in (shared / "runs").glob("*.json")) == names
    assert not (shared / "quarantine").exists()
    assert _tree(shared) == before


def test_a_segment_entry_of_a_newer_format_stops_gc_and_is_not_quarantined(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    LocalRunner(alice).run(keyed_plan(), cache=False)
    key = alice.remote.key
    entries = {}
    for p in (shared / "runs").glob("*.json"):
        entries[f"runs/{p.name}"] = _newer(json.loads(p.read_bytes()), key)
        p.unlink()
    name, data = segment_bytes(entries)
    (shared / name).parent.mkdir(parents=True, exist_ok=True)
    (shared / name).write_bytes(data)
    before = _tree(shared)
    with pytest.raises(StoreError, match="newer nbmagic"):
        collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    assert not (shared / "quarantine").exists()
    assert _tree(shared) == before
    kept = json.loads(gzip.decompress((shared / name).read_bytes()))["entries"]
    assert [e["record"]["format"] for e in kept] == [remote.RECORD_FORMAT + 1]


def test_a_record_with_a_bad_signature_is_still_set_aside(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    LocalRunner(alice).run(keyed_plan(), cache=False)
    _rewrite_loose(shared, b"x" * 32)  # newer format, signed with another key: unverifiable
    LocalRunner(alice).run(keyed_plan(), cache=False)  # a record the gc's key verifies: it is the team's key
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    assert not list((shared / "runs").glob("*.json"))
    assert list((shared / "quarantine").rglob("*.json"))


def test_sync_says_to_upgrade_and_reads_a_newer_record_again_once_upgraded(tmp_path, shared, capsys, monkeypatch):
    alice = RunStore(tmp_path / "alice" / "store")
    run = LocalRunner(alice).run(keyed_plan(), cache=False)
    _rewrite_loose(shared, alice.remote.key)
    bob = RunStore(tmp_path / "bob" / "store")
    capsys.readouterr()
    bob.remote.sync(bob)
    err = capsys.readouterr().err
    assert "written by a newer nbmagic" in err and "upgrade nbmagic" in err and "malformed" not in err
    assert run.id not in {r.id for r in bob.list_runs()}
    monkeypatch.setattr(remote, "RECORD_FORMAT", remote.RECORD_FORMAT + 1)  # bob upgrades
    bob.remote.sync(bob)
    assert run.id in {r.id for r in bob.list_runs()}
