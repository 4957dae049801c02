"""A record skipped for its signature is read again once the key is right; a segment entry that does not verify is skipped;
a segment whose bytes do not match its name is not used."""

from __future__ import annotations

import gzip
import json

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import segment_bytes
from nbmagic.store.runs import RunStore


def _plan() -> PipelinePlan:
    return PipelinePlan("keyed", (step("make", "x = [1, 2]", outputs=("x",)),), {}, ())


def test_a_record_skipped_under_a_wrong_key_is_imported_once_the_key_is_right(tmp_path, monkeypatch):
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{tmp_path / 'shared'}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(_plan())
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)  # bob's secret holds a wrong key
    assert RunStore(tmp_path / "bob" / "store").list_runs() == []
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)  # fixed
    assert [r.id for r in RunStore(tmp_path / "bob" / "store").list_runs()] == [run.id]


def test_a_segment_entry_that_does_not_verify_is_skipped_and_a_changed_segment_is_not_used(
    tmp_path, monkeypatch, capsys
):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(_plan(), cache=False) for _ in range(2)]
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
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(_plan())
    (record,) = (shared / "runs").glob(f"*-{run.id}.json")
    stamp, _, rest = record.name.partition("-")
    record.rename(record.with_name(f"{int(stamp) - 3600 * 1000:013d}-{rest}"))  # published an hour ago
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)
    bob = RunStore(tmp_path / "bob" / "store")
    assert bob.list_runs() == []
    bob.sync(force=True)
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    assert [r.id for r in RunStore(tmp_path / "bob" / "store").list_runs()] == [run.id]
