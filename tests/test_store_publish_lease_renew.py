"""A compiled step's writer lease stays fresh however long its publish takes, so a gc never deletes values it
has already uploaded and is about to name in its record."""

from __future__ import annotations

import os
import time
from pathlib import Path

from nbmagic.runtime import marshal, publish
from nbmagic.store.gc import Policy, collect
from nbmagic.store.remote import StoreBusy
from nbmagic.store.runs import RunStore


def _wait_renewed(locks: Path, since: float, limit: float = 10.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if any(p.stat().st_mtime > since for p in locks.glob("writer-*")):
            return
        time.sleep(0.02)


def test_a_publish_longer_than_the_lease_keeps_its_values(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    uri = f"file://{shared}"
    monkeypatch.setenv("NBMAGIC_STORE_URI", uri)
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    monkeypatch.setattr(publish, "LEASE_RENEW_S", 0.05, raising=False)
    folders = {}
    for name, value in (("x", list(range(1000))), ("y", list(range(2000)))):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        marshal.save(value, str(folders[name]), name)
    real_push, outcomes = publish._push, []

    def push(store, folder):  # noqa: ANN001, ANN202
        if folder.name == "y":  # x went up 2 min ago, the publish began 11 min ago; then a gc starts
            old, older = time.time() - 120, time.time() - 660
            for p in (shared / "objects").rglob("*"):
                os.utime(p, (old, old))
            for p in (shared / "locks").glob("writer-*"):
                os.utime(p, (older, older))
            _wait_renewed(shared / "locks", older + 1)
            try:
                collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=0), shared=True)
                outcomes.append("collected")
            except StoreBusy:
                outcomes.append("busy")
        return real_push(store, folder)

    monkeypatch.setattr(publish, "_push", push)
    target = {"uri": uri, "run": "run-big", "pipeline": "p", "steps": ["a"]}
    publish.publish_step(target, "a", "done", {}, {}, {k: str(v) for k, v in folders.items()}, {}, time.time())
    assert outcomes == ["busy"], "the gc saw the publishing step's lease"
    assert len(list((shared / "objects").rglob("manifest.json"))) == 2, "both values the record names are kept"
    assert not list((shared / "locks").glob("writer-*")), "the lease is removed once the record is written"
