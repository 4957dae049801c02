"""A run whose value is neither here nor in the shared store is not published without it: it stays queued."""

from __future__ import annotations

import shutil

import pytest

from helpers.plans import step
from helpers.store_homes import shared_folder
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store.objects import StoreError
from nbmagic.store.runs import RunStore


def test_publishing_a_run_whose_value_is_gone_is_one_line_and_publishes_nothing(tmp_path, monkeypatch):
    shared_folder(tmp_path, monkeypatch, "first")
    home = tmp_path / "alice" / "store"
    run = LocalRunner(RunStore(home)).run(PipelinePlan("gone", (step("make", "x = [1]", outputs=("x",)),), {}, ()))
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{tmp_path / 'second'}")  # a store that has none of it
    alice = RunStore(home)
    folder = alice.objects._path(alice.step_values(run.id, "make")["x"]["hash"])
    folder.chmod(0o700)
    shutil.rmtree(folder)
    with pytest.raises(StoreError, match="cannot publish") as caught:
        alice.remote.publish(alice, run.id)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "second" / "runs").exists() or not list((tmp_path / "second" / "runs").iterdir())
