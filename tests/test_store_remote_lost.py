"""A long shared run that waits between steps: shown as lost while silent, but kept by gc for a day after its
last sign of life (heartbeat or step end), not after it started."""

from __future__ import annotations

import os
import time

from helpers.store_homes import shared_folder
from nbmagic.runtime import marshal, publish
from nbmagic.store import gc
from nbmagic.store.gc import Policy, collect
from nbmagic.store.runs import RunStore


def _step(tmp_path, target: dict, name: str, started: float) -> None:
    folder = tmp_path / f"value-{target['run']}-{name}"
    folder.mkdir()
    marshal.save([1, 2, 3], str(folder), "x")
    publish.publish_step(target, name, "done", {}, {}, {"x": str(folder)}, {}, started)


def test_a_lost_run_is_kept_a_day_after_its_last_sign_of_life_not_its_start(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    target = {"uri": f"file://{shared}", "run": "run-long", "pipeline": "p", "steps": ["a", "b", "c"]}
    _step(tmp_path, target, "a", time.time() - 2 * 86400)  # started two days ago
    _step(tmp_path, target, "b", time.time() - 3600)  # step b ended an hour ago; c waits for its pod
    beat = shared / "live" / "run-long.json"
    os.utime(beat, (time.time() - 1800, time.time() - 1800))  # silent for half an hour
    _step(tmp_path, {**target, "run": "run-new", "steps": ["a"]}, "a", time.time())
    reader = RunStore(tmp_path / "reader" / "store")
    assert {r.id: r.status for r in reader.list_runs()} == {"run-long": "lost", "run-new": "done"}
    report = collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=1), shared=True, grace=0)
    assert not report.runs  # started over a day ago, but alive half an hour ago
    assert list((shared / "runs").glob("*run-long*")) or list((shared / "index").glob("*.json.gz"))
    later = time.time() + gc.LOST_KEEP_S + 60
    report = collect(RunStore(tmp_path / "gc2" / "store"), Policy(keep_last=1), shared=True, grace=0, now=later)
    assert [run_id for run_id, *_ in report.runs] == ["run-long"]
