"""Leases on an S3 store are judged by the server's clock (its ``Date`` header and ``LastModified`` stamps), against
moto's server in a process of its own, so it keeps the real time while this machine's clock runs 11 minutes ahead:
a compiled step waits for a fresh gc lease before it publishes, and a gc gives way to a fresh writer lease."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from helpers.s3 import moto_process, new_store
from nbmagic.runtime import marshal, publish
from nbmagic.runtime.component import nbmagic_run
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import StoreBusy
from nbmagic.store.runs import RunStore

pytestmark = pytest.mark.slow  # a moto server process

SKEW = 660.0  # 11 minutes: more than a lease's 10


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server in its own process: its clock is not the one the tests move."""
    url, proc = moto_process()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3(endpoint, monkeypatch):
    store = new_store(endpoint=endpoint)
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return store


def _ahead(monkeypatch) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)


def test_a_step_whose_clock_is_ahead_waits_for_a_fresh_gc_lease(s3, tmp_path, monkeypatch):
    lease = "team/runs/locks/gc-1.json"
    s3.client().put_object(Bucket=s3.bucket, Key=lease, Body=b"{}")  # a gc deleting right now, by the server
    _ahead(monkeypatch)
    waits = []
    sleep = time.sleep

    def gc_ends_after_two_waits(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread() or seconds != 1.0:
            return sleep(seconds)
        waits.append(s3.keys("team/runs/runs/"))  # what was published while the gc held the store
        if len(waits) == 2:
            s3.client().delete_object(Bucket=s3.bucket, Key=lease)
        return None

    monkeypatch.setattr(publish.time, "sleep", gc_ends_after_two_waits)
    target = {"uri": s3.uri, "run": "run-1", "pipeline": "p", "steps": ["a"], "dag": {"a": []}}
    out = SimpleNamespace(path=str(tmp_path / "art_n"), metadata={})
    nbmagic_run("a", "cell 1", "n = 3\n", "", {}, {}, {"n": out}, store=target)
    assert waits == [[], []], "the step waited while the gc's lease was fresh, publishing nothing"
    assert [k for k in s3.keys("team/runs/runs/") if k.endswith("-run-1-a.json")], "then it published"
    assert s3.keys("team/runs/locks/") == [], "its writer lease is gone"


def test_a_gc_whose_clock_is_ahead_gives_way_to_a_fresh_writer_lease(s3, tmp_path, monkeypatch):
    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save(list(range(1000)), str(folder), "x")
    backend = publish._backend(s3.uri)
    publish._push(backend, folder)  # a step mid-publish: its value is up, its record not yet written
    writer = "team/runs/locks/writer-abc.json"
    s3.client().put_object(Bucket=s3.bucket, Key=writer, Body=json.dumps({"pid": 1}).encode())
    values = s3.keys("team/runs/objects/")
    assert values
    _ahead(monkeypatch)
    with pytest.raises(StoreBusy, match="1 run"):
        collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=0), shared=True)
    assert s3.keys("team/runs/objects/") == values, "the writer's value is kept"
    assert s3.keys("team/runs/locks/") == ["team/runs/locks/writer-abc.json"], "the gc's own lease is gone"
    s3.client().delete_object(Bucket=s3.bucket, Key=writer)  # the writer is done: the same gc now runs
    collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=0), shared=True)
