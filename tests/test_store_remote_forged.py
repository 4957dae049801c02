"""A forged segment (copies of real records' keys with a bad signature) on a shared folder: it never hides or
replaces the real runs, in a sync, a merge or a gc; a skipped record is read and reported once."""

from __future__ import annotations

import gzip
import hashlib
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
    folder = shared_folder(tmp_path, monkeypatch)
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
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
    (good,) = [p.relative_to(shared).as_posix() for p in (shared / "index").glob("*.json.gz")]
    _forge(shared, before=good)
    carol = RunStore(tmp_path / "carol" / "store")
    assert {r.id for r in carol.list_runs()} == {r.id for r in runs}


def test_merging_keeps_the_copy_that_verifies_and_gc_keeps_the_runs(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    first = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
    forged = _forge(shared)  # smaller than the real segment: a merge reads it first
    more = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(6)]
    everyone = {r.id for r in first + more}
    real = [p for p in (shared / "index").glob("*.json.gz") if p.relative_to(shared).as_posix() != forged]
    assert len(real) == 1, real  # merged: the real copies were carried, the forged segment left for gc
    assert {e["record"]["run"]["id"] for e in _entries(real[0])} == everyone
    assert (shared / forged).is_file()
    assert {r.id for r in RunStore(tmp_path / "dave" / "store").list_runs()} == everyone
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    assert {r.id for r in RunStore(tmp_path / "erin" / "store").list_runs()} == everyone
    carried = [e for seg in (shared / "index").glob("*.json.gz") for e in _entries(seg)]
    assert {e["record"]["run"]["id"] for e in carried} == everyone
    assert not [e for e in carried if e["sig"].startswith("0000")]  # forged copies went to quarantine only


def test_a_record_not_signed_with_the_key_is_read_and_reported_once(tmp_path, shared, capsys):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
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


def _tree(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_segment_of_a_newer_format_stops_gc_with_one_line_and_removes_nothing(tmp_path, shared, capsys):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
    seg = next((shared / "index").glob("*.json.gz"))
    body = {"format": remote.SEGMENT_FORMAT + 1, "blocks": [{"entries": _entries(seg)}]}
    data = gzip.compress(json.dumps(body).encode(), mtime=0)
    newer = shared / "index" / f"{hashlib.sha256(data).hexdigest()}.json.gz"
    newer.write_bytes(data)
    for p in (shared / "index").glob("*.json.gz"):
        if p != newer:
            p.unlink()  # its runs are only in the newer segment now
    before = _tree(shared)
    with pytest.raises(StoreError, match="newer nbmagic") as caught:
        collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=1), shared=True, grace=0)
    assert "\n" not in str(caught.value) and "nothing was removed" in str(caught.value)
    assert {k for k in _tree(shared) if not k.startswith("locks/")} == {k for k in before if not k.startswith("locks/")}
    assert not (shared / "quarantine").exists()
    kept = json.loads(gzip.decompress(newer.read_bytes()))["blocks"][0]["entries"]
    assert {e["record"]["run"]["id"] for e in kept} == {r.id for r in runs}
    assert "newer nbmagic" in capsys.readouterr().err  # the sync says why the runs are not shown


def test_forged_entry_keys_are_set_aside_by_segment_and_index_and_gc_goes_on(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
    seg = next((shared / "index").glob("*.json.gz"))
    body = {k: v for k, v in _entries(seg)[0].items() if k != "key"}
    bad = ["runs/../x.json", "runs/a//b.json", "runs/" + "y" * 1100 + ".json"]
    forged, _data = segment_bytes({k: {**body, "sig": "2" * 64} for k in bad})
    (shared / forged).write_bytes(_data)
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=50), shared=True, grace=0)
    digest = forged.removeprefix("index/").removesuffix(".json.gz")
    aside = sorted(p.name for p in (shared / "quarantine" / "index").glob("*.json"))
    assert aside == [f"{digest}-{i}.json" for i in range(3)]
    assert {r.id for r in RunStore(tmp_path / "erin" / "store").list_runs()} == {r.id for r in runs}


def test_a_segment_merged_away_between_listing_and_reading_is_found_by_listing_again(tmp_path, shared):
    alice = RunStore(tmp_path / "alice" / "store")
    runs = [LocalRunner(alice).run(keyed_plan(), cache=False) for _ in range(3)]
    (seg,) = [p.relative_to(shared).as_posix() for p in (shared / "index").glob("*.json.gz")]
    carol = RunStore(tmp_path / "carol" / "store")
    real_get = carol.remote.backend.get_bytes

    def get(key: str):  # noqa: ANN202 - another writer merges the segment into a new one just before this GET
        if key == seg and (shared / seg).exists():
            data = gzip.compress(gzip.decompress((shared / seg).read_bytes()), 1, mtime=0)
            (shared / "index" / f"{hashlib.sha256(data).hexdigest()}.json.gz").write_bytes(data)
            (shared / seg).unlink()
        return real_get(key)

    carol.remote.backend.get_bytes = get
    assert {r.id for r in carol.list_runs()} == {r.id for r in runs}
