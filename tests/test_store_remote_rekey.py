"""A record skipped for its signature is read again once the key is right; a segment entry that does not verify is skipped;
a segment whose bytes do not match its name is not used."""

from __future__ import annotations

import gzip
import json

from helpers.store_homes import keyed_plan, restamp_record, shared_folder
from nbmagic.run.local import LocalRunner
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import segment_bytes
from nbmagic.store.runs import RunStore


def test_a_record_skipped_under_a_wrong_key_is_imported_once_the_key_is_right(tmp_path, monkeypatch):
    shared_folder(tmp_path, monkeypatch)
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(keyed_plan())
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)  # bob's secret holds a wrong key
    assert RunStore(tmp_path / "bob" / "store").list_runs() == []
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)  # fixed
    assert [r.id for r in RunStore(tmp_path / "bob" / "store").list_runs()] == [run.id]


def test_a_segment_entry_that_does_not_verify_is_skipped_and_a_changed_segment_is_not_used(
    tmp_path, monkeypatch, capsys
):
    shared = shared_folder(tmp_path, monkeypatch)
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(2)]
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=5), shared=True, grace=0)
    (index,) = (shared / "index").glob("*.json.gz")
    assert not list((shared / "runs").glob("*.json"))  # gc folded every record into the one segment
    body = json.loads(gzip.decompress(index.read_bytes()))
    body["entries"][0]["sig"] = "0" * 64
    entries = {e.pop("key"): e for e in body["entries"]}
    key, data = segment_bytes(entries)  # a well-named segment whose first record does not verify
    index.unlink()
    (shared / key).write_bytes(data)
    carol = RunStore(tmp_path / "carol" / "store").list_runs()
    assert len(carol) == 1 and carol[0].id in {r.id for r in runs}
    assert f"skipped 1 run record(s) in file://{shared} not signed with the team key" in capsys.readouterr().err
    (shared / key).write_bytes(gzip.compress(json.dumps(body).encode()))  # bytes no longer match the name
    assert RunStore(tmp_path / "dave" / "store").list_runs() == []
    assert "segment(s) of" in capsys.readouterr().err


def test_an_old_record_skipped_under_a_wrong_key_is_imported_once_the_key_is_right(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(keyed_plan())
    restamp_record(shared, run.id, -3600 * 1000)  # published an hour ago
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)
    bob = RunStore(tmp_path / "bob" / "store")
    assert bob.list_runs() == []
    bob.sync(force=True)
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    assert [r.id for r in RunStore(tmp_path / "bob" / "store").list_runs()] == [run.id]
