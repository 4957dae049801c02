"""A forged segment (copies of real records' keys with a bad signature) on a shared folder: it never hides or
replaces the real runs, in a sync, a merge or a gc; a skipped record is read and reported once."""

from __future__ import annotations

import gzip
import json

import pytest

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store import remote
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import segment_bytes
from nbmagic.store.runs import RunStore


def _plan() -> PipelinePlan:
    return PipelinePlan("keyed", (step("make", "x = [1, 2]", outputs=("x",)),), {}, ())


@pytest.fixture
def shared(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{folder}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    monkeypatch.setattr(remote, "COMPACT_EVERY", 3)
    monkeypatch.setattr(remote, "COMPACT_MIN", 2)
    monkeypatch.setattr(remote, "MERGE_AT", 3)
    return folder


def _entries(path) -> list[dict]:
    return json.loads(gzip.decompress(path.read_bytes()))["entries"]


def _forge(folder, extra: dict | None = None, before: str | None = None) -> str:
    """A segment holding every key of the store's segments with a bad signature (plus ``extra``), named so it
    sorts before ``before`` when given."""
    entries = {e["key"]: e for seg in (folder / "index").glob("*.json.gz") for e in _entries(seg)}
    for attempt in range(10_000):
        forged = {k: {"record": e["record"], "sig": f"{attempt:064d}"} for k, e in entries.items()}
        forged.update(extra or {})
        key, data = segment_bytes(forged)
        if before is None or key < before:
            (folder / key).write_bytes(data)
            return key
    raise AssertionError("no name sorts first")


def test_a_forged_segment_listed_first_does_not_hide_the_real_runs(tmp_path, shared, capsys):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(_plan(), cache=False) for _ in range(3)]
    (good,) = [p.relative_to(shared).as_posix() for p in (shared / "index").glob("*.json.gz")]
    _forge(shared, before=good)
    carol = RunStore(tmp_path / "carol" / "store")
    assert {r.id for r in carol.list_runs()} == {r.id for r in runs}


def test_merging_keeps_the_copy_that_verifies_and_gc_keeps_the_runs(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    first = [LocalRunner(alice).run(_plan(), cache=False) for _ in range(3)]
    _forge(shared)  # smaller than the real segment: a merge reads it first
    more = [LocalRunner(alice).run(_plan(), cache=False) for _ in range(6)]
    everyone = {r.id for r in first + more}
    assert {r.id for r in RunStore(tmp_path / "dave" / "store").list_runs()} == everyone
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    assert {r.id for r in RunStore(tmp_path / "erin" / "store").list_runs()} == everyone
    carried = [e for seg in (shared / "index").glob("*.json.gz") for e in _entries(seg)]
    assert {e["record"]["run"]["id"] for e in carried} == everyone
    assert not [e for e in carried if e["sig"].startswith("0000")]  # forged copies went to quarantine only


def test_a_record_not_signed_with_the_key_is_read_and_reported_once(tmp_path, shared, capsys):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(_plan(), cache=False) for _ in range(3)]
    seg = next((shared / "index").glob("*.json.gz"))
    stranger = {k: v for k, v in _entries(seg)[0].items() if k != "key"}
    stranger["record"] = {**stranger["record"], "run": {**stranger["record"]["run"], "id": "run-stranger"}}
    forged = _forge(shared, extra={"runs/0000000000001-run-stranger.json": {**stranger, "sig": "1" * 64}})
    carol = RunStore(tmp_path / "carol" / "store")
    assert {r.id for r in carol.list_runs()} == {r.id for r in runs}
    reads: list[str] = []
    real_get = carol.remote.backend.get_bytes
    carol.remote.backend.get_bytes = lambda key: reads.append(key) or real_get(key)
    carol.sync(force=True)
    carol.sync(force=True)
    assert forged not in reads  # judged once under this key: not downloaded again
    lines = [line for line in capsys.readouterr().err.splitlines() if "not signed with the team key" in line]
    assert len(lines) == 1 and "1 run record" in lines[0], lines
