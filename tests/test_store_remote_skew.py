"""A writer whose clock runs ahead cannot hide the runs of writers whose clock is right."""

from __future__ import annotations

import os
import time

from helpers.plans import step
from helpers.store_homes import restamp_record, saved_value, shared_folder
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.runtime import publish
from nbmagic.store.gc import Policy, collect
from nbmagic.store.runs import RunStore


def _plan(size: int) -> PipelinePlan:
    return PipelinePlan("skew", (step("make", f"x = list(range({size}))", outputs=("x",)),), {}, ())


def test_a_reader_sees_runs_of_a_correct_clock_after_a_fast_clocks_run(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    fast = LocalRunner(RunStore(tmp_path / "fast" / "store")).run(_plan(3))
    restamp_record(shared, fast.id, 5 * 60 * 1000)  # its clock is 5 min ahead
    reader = RunStore(tmp_path / "reader" / "store")
    assert [r.id for r in reader.list_runs()] == [fast.id]
    right = LocalRunner(RunStore(tmp_path / "right" / "store")).run(_plan(4))
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == {fast.id, right.id}


def test_a_reader_sees_runs_of_a_clock_five_minutes_behind(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    first = LocalRunner(RunStore(tmp_path / "right" / "store")).run(_plan(3))
    reader = RunStore(tmp_path / "reader" / "store")
    assert [r.id for r in reader.list_runs()] == [first.id]
    slow = LocalRunner(RunStore(tmp_path / "slow" / "store")).run(_plan(4))
    restamp_record(shared, slow.id, -5 * 60 * 1000)  # its clock is 5 min behind
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == {first.id, slow.id}


def test_a_reader_whose_clock_is_an_hour_ahead_does_not_call_a_live_run_lost(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    folder = saved_value(tmp_path)
    target = {"uri": f"file://{shared}", "run": "run-slow", "pipeline": "p", "steps": ["a", "b"]}
    publish.publish_step(target, "a", "done", {}, {}, {"x": folder}, {}, time.time())  # b runs now
    reader = RunStore(tmp_path / "reader" / "store")
    assert {r.id: r.status for r in reader.list_runs()} == {"run-slow": "running"}
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this machine's clock: an hour ahead of the disk's
    reader.sync(force=True)
    assert {r.id: r.status for r in reader.list_runs()} == {"run-slow": "running"}
    beat = shared / "live" / "run-slow.json"
    os.utime(beat, (real() - 3600, real() - 3600))  # by the disk's clock, silent for an hour: lost
    reader.sync(force=True)
    assert {r.id: r.status for r in reader.list_runs()} == {"run-slow": "lost"}


def test_a_run_over_the_cap_is_shown_lost_once_its_heartbeat_is_stale_and_kept_while_fresh(
    tmp_path, monkeypatch, capsys
):
    shared = shared_folder(tmp_path, monkeypatch)
    folder = saved_value(tmp_path)
    target = {"uri": f"file://{shared}", "run": "run-long", "pipeline": "p", "steps": ["a", "b"]}
    publish.publish_step(target, "a", "done", {}, {}, {"x": folder}, {}, time.time() - 8 * 86400)
    beat = shared / "live" / "run-long.json"
    os.utime(beat, (time.time() - 8 * 86400, time.time() - 8 * 86400))  # step a's end, 8 days ago: silent since
    reader = RunStore(tmp_path / "reader" / "store")
    assert {r.id: r.status for r in reader.list_runs()} == {"run-long": "lost"}
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "run-long" in line]
    assert "8 days ago" in line and "shown as lost" in line
    beat.write_text("{}")  # step b beats again: a long run, alive
    newer = {**target, "run": "run-new", "steps": ["a"]}
    publish.publish_step(newer, "a", "done", {}, {}, {"x": folder}, {}, time.time())
    reader.sync(force=True)
    assert {r.id: r.status for r in reader.list_runs()} == {"run-long": "running", "run-new": "done"}
    report = collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=1), shared=True, dry_run=True, grace=0)
    assert not report.runs  # over the cap, but its heartbeat is fresh: gc keeps it
