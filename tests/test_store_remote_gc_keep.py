"""Shared gc keeps the values of every run still recorded in the shared store, whatever this home's index holds."""

from __future__ import annotations

import pytest

from helpers.plans import step
from nbmagic.errors import NbMagicError
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.gc import Policy, collect
from nbmagic.store.runs import RunStore


def _plan(size: int, name: str = "demo") -> PipelinePlan:
    make = step("make", f"import numpy as np\nx = np.arange({size}, dtype='float64')", outputs=("x",))
    return PipelinePlan(name, (make,), {}, ())


def _home(tmp_path, name: str) -> RunStore:
    return RunStore(tmp_path / name / "store")


def test_shared_gc_keeps_values_of_team_runs_this_home_no_longer_indexes(tmp_path, s3_store):
    alice = _home(tmp_path, "alice")
    old = LocalRunner(alice).run(_plan(100))
    LocalRunner(alice).run(_plan(200))
    bob = _home(tmp_path, "bob")
    assert len(bob.list_runs()) == 2
    collect(bob, Policy(keep_last=1))  # bob's own (local) gc forgets the older team run
    assert bob.get_run(old.id) is None
    collect(bob, Policy(keep_last=1), keep=[old.id], shared=True, grace=0)
    ns: dict = {}
    restore(_home(tmp_path, "carol"), old.id, namespace=ns)  # its record is still shared, so are its values
    assert ns["x"].shape == (100,)


def test_shared_gc_stops_when_a_sync_fails(tmp_path, s3_store):
    from nbmagic.store.backends import RemoteError

    alice = _home(tmp_path, "alice")
    run = LocalRunner(alice).run(_plan(100))
    bob = _home(tmp_path, "bob")
    backend = bob.remote.backend
    get_bytes = backend.get_bytes

    def failing(key: str):
        if key.startswith("runs/"):
            raise RemoteError("the run store: connection reset")
        return get_bytes(key)

    backend.get_bytes = failing
    with pytest.raises(NbMagicError, match="connection reset"):
        collect(bob, Policy(keep_last=0), shared=True, grace=0)
    del backend.get_bytes
    ns: dict = {}
    restore(_home(tmp_path, "carol"), run.id, namespace=ns)
    assert ns["x"].shape == (100,)
