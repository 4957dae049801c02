"""A compiled step's store cache and secret hold-back, driven through ``nbmagic_run`` on a file:// store."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from nbmagic.runtime import marshal, podcache
from nbmagic.runtime.component import nbmagic_run
from nbmagic.runtime.store_secrets import MARK

SECRET = "hunter2-very-secret-token"


class _Metrics:
    def log_metric(self, name, value):
        pass


@pytest.fixture
def team_key(monkeypatch):
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "team-key-for-tests-0123456789")


def _value(tmp_path, name, value, marked=False):
    folder = tmp_path / f"in-{name}"
    folder.mkdir()
    marshal.save(value, folder, name)
    if marked:  # an upstream --secret step's output, held back and marked by its pod
        (folder / MARK).write_bytes(b"")
    return folder


def _run(tmp_path, n, code, inputs, out="y", watch=(), cache=True, step="s"):
    root = tmp_path / "store"
    nbmagic_run(
        step=step,
        label="c",
        code=code,
        prelude="",
        parameters={},
        inputs={name: SimpleNamespace(path=str(folder), metadata={}) for name, folder in inputs.items()},
        outputs={out: SimpleNamespace(path=str(tmp_path / f"run{n}" / out), metadata={})},
        metric_names=(),
        metrics=_Metrics(),
        watch=watch,
        store={"uri": f"file://{root}", "run": f"run-{n}", "pipeline": "p", "steps": [step], "dag": {step: []},
               "cache": cache},
    )  # fmt: skip
    return root


def _leaked(root, secret=SECRET):
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_failed_place_leaves_no_heartbeat_beating(tmp_path, team_key, monkeypatch):
    x = _value(tmp_path, "x", [1, 2, 3])
    _run(tmp_path, 1, "y = [v * 2 for v in x]", {"x": x})

    def no_space(hit, outputs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(podcache, "place", no_space)
    _run(tmp_path, 2, "y = [v * 2 for v in x]", {"x": x})
    alive = [t for t in threading.enumerate() if t.name == "nbmagic-heartbeat"]
    assert not alive, f"{len(alive)} heartbeat thread(s) still beating after the step's record"
