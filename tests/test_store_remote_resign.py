"""A value first uploaded by a writer without the team key (or with another) gets the team's signature from the
next writer that holds the key, so the team can load it."""

from __future__ import annotations

import time

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.runtime import marshal, publish
from nbmagic.store.runs import RunStore


def _plan() -> PipelinePlan:
    return PipelinePlan("signed", (step("make", "table = {'a': 1, 'b': [1, 2]}", outputs=("table",)),), {}, ())


def test_a_keyed_writer_signs_a_value_a_keyless_writer_uploaded(tmp_path, monkeypatch):
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{tmp_path / 'shared'}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "w" * 32)  # a writer holding another key uploads the value first
    LocalRunner(RunStore(tmp_path / "stranger" / "store")).run(_plan())
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(_plan())
    ns: dict = {}
    restore(RunStore(tmp_path / "bob" / "store"), run.id, namespace=ns)
    assert ns["table"] == {"a": 1, "b": [1, 2]}


def test_a_keyed_step_in_a_component_signs_a_value_a_keyless_step_uploaded(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save({"a": 1}, str(folder), "table")
    target = {"uri": f"file://{shared}", "run": "run-1", "pipeline": "p", "steps": ["make"]}
    monkeypatch.delenv("NBMAGIC_STORE_KEY", raising=False)
    publish.publish_step(target, "make", "done", {}, {}, {"table": str(folder)}, {}, time.time())
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    publish.publish_step({**target, "run": "run-2"}, "make", "done", {}, {}, {"table": str(folder)}, {}, time.time())
    bob = RunStore(tmp_path / "bob" / "store")
    assert [r.id for r in bob.list_runs()] == ["run-2"]
    ns: dict = {}
    restore(bob, "run-2", namespace=ns)
    assert ns["table"] == {"a": 1}
