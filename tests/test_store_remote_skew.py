"""A writer whose clock runs ahead cannot hide the runs of writers whose clock is right."""

from __future__ import annotations

import os
import time

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.runtime import marshal, publish
from nbmagic.store.gc import Policy, collect
from nbmagic.store.runs import RunStore


def _plan(size: int) -> PipelinePlan:
    return PipelinePlan("skew", (step("make", f"x = list(range({size}))", outputs=("x",)),), {}, ())


def test_a_reader_sees_runs_of_a_correct_clock_after_a_fast_clocks_run(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    fast = LocalRunner(RunStore(tmp_path / "fast" / "store")).run(_plan(3))
    (record,) = (shared / "runs").glob(f"*-{fast.id}.json")
    stamp, _, rest = record.name.partition("-")
    record.rename(record.with_name(f"{int(stamp) + 5 * 60 * 1000:013d}-{rest}"))  # its clock is 5 min ahead
    reader = RunStore(tmp_path / "reader" / "store")
    assert [r.id for r in reader.list_runs()] == [fast.id]
    right = LocalRunner(RunStore(tmp_path / "right" / "store")).run(_plan(4))
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == {fast.id, right.id}


def test_a_reader_sees_runs_of_a_clock_five_minutes_behind(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    first = LocalRunner(RunStore(tmp_path / "right" / "store")).run(_plan(3))
    reader = RunStore(tmp_path / "reader" / "store")
    assert [r.id for r in reader.list_runs()] == [first.id]
    slow = LocalRunner(RunStore(tmp_path / "slow" / "store")).run(_plan(4))
    (record,) = (shared / "runs").glob(f"*-{slow.id}.json")
    stamp, _, rest = record.name.partition("-")
    record.rename(record.with_name(f"{int(stamp) - 5 * 60 * 1000:013d}-{rest}"))  # its clock is 5 min behind
    reader.sync(force=True)
    assert {r.id for r in reader.list_runs()} == {first.id, slow.id}


def test_a_reader_whose_clock_is_an_hour_ahead_does_not_call_a_live_run_lost(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save([1, 2], str(folder), "x")
    target = {"uri": f"file://{shared}", "run": "run-slow", "pipeline": "p", "steps": ["a", "b"]}
    publish.publish_step(target, "a", "done", {}, {}, {"x": str(folder)}, {}, time.time())  # b runs now
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
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save([1, 2], str(folder), "x")
    target = {"uri": f"file://{shared}", "run": "run-long", "pipeline": "p", "steps": ["a", "b"]}
    publish.publish_step(target, "a", "done", {}, {}, {"x": str(folder)}, {}, time.time() - 8 * 86400)
    beat = shared / "live" / "run-long.json"
    os.utime(beat, (time.time() - 8 * 86400, time.time() - 8 * 86400))  # step a's end, 8 days ago: silent since
    reader = RunStore(tmp_path / "reader" / "store")
    assert {r.id: r.status for r in reader.list_runs()} == {"run-long": "lost"}
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "run-long" in line]
    assert "8 days ago" in line and "shown as lost" in line
    beat.write_text("{}")  # step b beats again: a long run, alive
    newer = {**target, "run": "run-new", "steps": ["a"]}
    publish.publish_step(newer, "a", "done", {}, {}, {"x": str(folder)}, {}, time.time())
    reader.sync(force=True)
    assert {r.id: r.status for r in reader.list_runs()} == {"run-long": "running", "run-new": "done"}
    report = collect(RunStore(tmp_path / "gc" / "store"), Policy(keep_last=1), shared=True, dry_run=True, grace=0)
    assert not report.runs  # over the cap, but its heartbeat is fresh: gc keeps it
