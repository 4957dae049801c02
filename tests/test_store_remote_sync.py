"""Syncing the shared store (moto's S3 server): a fresh home reads a few segments, not one object per run, even
with many writers folding records at once; no writer's clock can hide a run; a running run whose pod died shows as
lost once its heartbeat falls silent, and gc no longer treats it as live."""

from __future__ import annotations

import json
import threading
import time

import pytest

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.runtime import marshal, publish
from nbmagic.store import remote
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import RemoteStore
from nbmagic.store.runs import RunStore


def _plan() -> PipelinePlan:
    return PipelinePlan("many", (step("make", "x = [1, 2, 3]", outputs=("x",)),), {}, ())


def _home(tmp_path, name: str) -> RunStore:
    return RunStore(tmp_path / name / "store")


def _clones(store: RunStore, template: dict, prefix: str, n: int) -> list[str]:
    """``n`` runs like ``template`` in ``store``'s index (as if run there), ready to publish."""
    records = []
    for i in range(n):
        record = json.loads(json.dumps(template))
        record["run"]["id"] = f"{prefix}-{i:03d}"
        record["run"]["started"] += i
        records.append(record)
    store.import_runs(records)
    return [r["run"]["id"] for r in records]


def _counting(store: RunStore) -> list[str]:
    fetched: list[str] = []
    backend = store.remote.backend
    get_bytes = backend.get_bytes
    backend.get_bytes = lambda key: fetched.append(key) or get_bytes(key)
    return fetched


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(remote, "COMPACT_EVERY", 3)
    monkeypatch.setattr(remote, "COMPACT_MIN", 2)
    monkeypatch.setattr(remote, "MERGE_AT", 3)


def test_a_fresh_home_reads_segments_not_one_object_per_run(tmp_path, s3_store, small_segments):
    alice = _home(tmp_path, "alice")
    first = LocalRunner(alice).run(_plan())
    ids = [first.id, *_clones(alice, alice.export_run(first.id), "clone", 60)]
    for run_id in ids[1:]:
        alice.remote.publish(alice, run_id)
    loose = s3_store.keys("team/runs/runs/")
    assert len(loose) < 20, len(loose)  # publishers folded the others into segments
    bob = _home(tmp_path, "bob")
    fetched = _counting(bob)
    assert {r.id for r in bob.list_runs()} == set(ids)
    assert len(fetched) <= len(loose) + len(s3_store.keys("team/runs/index/")) < 30, fetched


def test_many_writers_folding_at_once_lose_no_run(tmp_path, s3_store, small_segments):
    alice = _home(tmp_path, "alice")
    first = LocalRunner(alice).run(_plan())
    template = alice.export_run(first.id)
    writers = []
    for w in range(4):
        home = _home(tmp_path, f"writer{w}")
        ids = _clones(home, template, f"w{w}", 15)
        writers.append((home, RemoteStore(home.remote.uri), ids))  # each its own client and memory

    def write(home: RunStore, store: RemoteStore, ids: list[str]) -> None:
        for run_id in ids:
            store.publish(home, run_id)

    reader = _home(tmp_path, "reader")
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            reader.sync(force=True)

    threads = [threading.Thread(target=write, args=w) for w in writers] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads[:-1]:
        thread.join()
    done.set()
    threads[-1].join()
    expected = {first.id} | {run_id for _h, _s, ids in writers for run_id in ids}
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == expected  # it synced throughout, while records were folded
    assert {r.id for r in _home(tmp_path, "fresh").list_runs()} == expected
    assert len(s3_store.keys("team/runs/runs/")) < 20


def test_a_run_of_a_writer_whose_clock_is_half_an_hour_behind_is_seen(tmp_path, s3_store):
    first = LocalRunner(_home(tmp_path, "right")).run(_plan())
    reader = _home(tmp_path, "reader")
    assert [r.id for r in reader.list_runs()] == [first.id]
    slow = _home(tmp_path, "slow")
    late = LocalRunner(slow).run(_plan())
    client = s3_store.client()
    (key,) = [k for k in s3_store.keys("team/runs/runs/") if late.id in k]
    stamp, _, rest = key.rpartition("/")[2].partition("-")
    behind = f"{key.rpartition('/')[0]}/{int(stamp) - 30 * 60 * 1000:013d}-{rest}"  # its clock: 30 min behind
    client.copy_object(Bucket=s3_store.bucket, Key=behind, CopySource={"Bucket": s3_store.bucket, "Key": key})
    client.delete_object(Bucket=s3_store.bucket, Key=key)
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == {first.id, late.id}


def _step(tmp_path, target: dict, name: str, started: float) -> None:
    folder = tmp_path / f"value-{target['run']}-{name}"
    folder.mkdir()
    marshal.save([1, 2, 3], str(folder), "x")
    publish.publish_step(target, name, "done", {}, {}, {"x": str(folder)}, {}, started)


def test_a_run_whose_heartbeat_falls_silent_shows_as_lost_and_gc_lets_it_go(tmp_path, s3_store, monkeypatch, capsys):
    monkeypatch.setattr(remote, "LEASE_S", 3.0)
    monkeypatch.setattr(publish, "HEARTBEAT_S", 0.5)
    base = {"uri": s3_store.uri, "pipeline": "kfp-demo"}
    killed = {**base, "run": "run-killed", "steps": ["a", "b"]}
    _step(tmp_path, killed, "a", time.time() - 60)  # step a ended; b's pod runs, then is killed
    stop = publish.heartbeat(killed)
    newer = {**base, "run": "run-newer", "steps": ["a"]}
    _step(tmp_path, newer, "a", time.time())
    reader = _home(tmp_path, "reader")
    time.sleep(4)  # past the lease, but the heartbeat is renewed
    assert {r.id: r.status for r in reader.list_runs()} == {"run-killed": "running", "run-newer": "done"}
    kept = collect(_home(tmp_path, "gc"), Policy(keep_last=1), shared=True, dry_run=True, grace=0)
    assert not kept.runs  # a live run is never collected
    stop()  # the pod is killed: no more heartbeats
    time.sleep(4.5)
    reader.sync(force=True)
    assert {r.id: r.status for r in reader.list_runs()} == {"run-killed": "lost", "run-newer": "done"}
    lines = [line for line in capsys.readouterr().err.splitlines() if "run-killed" in line]
    assert len(lines) == 1 and "no heartbeat" in lines[0] and "shown as lost" in lines[0], lines
    assert {r.id: r.status for r in _home(tmp_path, "fresh").list_runs()}["run-killed"] == "lost"
    report = collect(_home(tmp_path, "gc2"), Policy(keep_last=1), shared=True, grace=0)
    assert [run_id for run_id, *_ in report.runs] == ["run-killed"]
    assert not [k for k in s3_store.keys("team/runs/runs/") if "run-killed" in k]


def test_a_second_gc_keeps_the_cache_entries_and_logs_of_runs_whose_records_are_in_a_segment(tmp_path, s3_store):
    plan = PipelinePlan("logged", (step("make", "print('made')\nx = [1, 2, 3]", outputs=("x",)),), {}, ())
    run = LocalRunner(_home(tmp_path, "alice")).run(plan)

    def shared() -> list[str]:
        return [k for k in s3_store.keys("team/runs/") if "/cache/" in k or "/logs/" in k]

    before = shared()
    assert before
    collect(_home(tmp_path, "bob"), Policy(keep_last=1), shared=True, grace=0)
    assert not s3_store.keys("team/runs/runs/")  # the record is now in the one segment
    collect(_home(tmp_path, "carol"), Policy(keep_last=1), shared=True, grace=0)
    assert shared() == before
    assert [r.id for r in _home(tmp_path, "dave").list_runs()] == [run.id]
