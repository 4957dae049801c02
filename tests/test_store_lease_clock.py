"""Writer and gc leases are judged by the store's clock, never by the clock of the machine that reads them:
a gc or a compiled step whose clock is off by more than a lease's life still sees the other side's lease."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from email.utils import format_datetime

import pytest

from nbmagic.runtime import marshal, publish
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import StoreBusy
from nbmagic.store.runs import RunStore

SKEW = 660.0  # 11 minutes: more than a lease's 10


def test_a_gc_whose_clock_is_ahead_sees_a_live_writer_lease(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    uri = f"file://{shared}"
    monkeypatch.setenv("NBMAGIC_STORE_URI", uri)
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save(list(range(1000)), str(folder), "x")
    store = publish._backend(uri)
    store.put("locks/writer-abc.json", data=json.dumps({"pid": 1, "since": time.time()}).encode())
    publish._push(store, folder)  # a step mid-publish: its value up 2 min ago, its record not yet written
    old = time.time() - 120
    for p in (shared / "objects").rglob("*"):
        os.utime(p, (old, old))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)
    with pytest.raises(StoreBusy):
        collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=0), shared=True)
    assert list((shared / "objects").rglob("manifest.json")), "the writer's value is kept"


def test_a_step_whose_clock_is_ahead_waits_for_a_live_gc(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "locks").mkdir(parents=True)
    (shared / "locks" / "gc-1.json").write_text(json.dumps({"since": time.time()}))  # a gc deleting right now
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)
    monkeypatch.setattr(publish.time, "sleep", lambda _s: None)
    target = {"uri": f"file://{shared}", "run": "run-1", "pipeline": "p", "steps": ["a"]}
    with pytest.raises(RuntimeError, match="gc"):
        publish.publish_step(target, "a", "done", {}, {}, {}, {}, real())
    assert not (shared / "runs").exists(), "nothing is published while the gc holds the store"


def test_a_step_whose_clock_is_behind_is_not_held_by_a_dead_gc(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "locks").mkdir(parents=True)
    lease = shared / "locks" / "gc-1.json"
    lease.write_text(json.dumps({"since": time.time()}))
    stale = time.time() - SKEW
    os.utime(lease, (stale, stale))  # by the disk's clock, the gc died 11 minutes ago
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - SKEW)
    monkeypatch.setattr(publish.time, "sleep", lambda _s: None)
    target = {"uri": f"file://{shared}", "run": "run-1", "pipeline": "p", "steps": ["a"]}
    key = publish.publish_step(target, "a", "done", {}, {}, {}, {}, real())
    assert (shared / key).is_file()


class _Client:
    """An S3 client's listing as the server answers it: items stamped by its clock, its ``Date`` header."""

    def __init__(self, server_now: float, modified: float) -> None:
        self.server_now, self.modified = server_now, modified

    def list_objects_v2(self, **_kw):  # noqa: ANN003, ANN201
        stamp = dt.datetime.fromtimestamp(self.modified, dt.UTC)
        date = format_datetime(dt.datetime.fromtimestamp(self.server_now, dt.UTC), usegmt=True)
        return {
            "Contents": [{"Key": "locks/gc-1.json", "LastModified": stamp}],
            "ResponseMetadata": {"HTTPHeaders": {"date": date}},
        }


@pytest.mark.parametrize(("skew", "age", "live"), [(SKEW, 5.0, True), (-SKEW, 700.0, False)])
def test_an_s3_lease_is_judged_by_the_servers_date(monkeypatch, skew, age, live):
    server_now = time.time()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    s3 = object.__new__(publish._S3)
    s3.client, s3.bucket, s3.prefix = _Client(server_now, server_now - age), "b", ""
    assert s3.live("locks/gc-") is live
