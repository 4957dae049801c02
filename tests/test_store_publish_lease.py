"""The step publisher in compiled components never publishes while a gc of the shared store holds it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nbmagic.runtime import publish


def _target(root: Path) -> dict:
    return {"uri": f"file://{root}", "run": "run-1", "pipeline": "demo", "steps": ["make"]}


def test_a_step_gives_up_with_one_line_when_a_gc_holds_the_store_too_long(tmp_path, monkeypatch):
    root = tmp_path / "shared"
    (root / "locks").mkdir(parents=True)
    (root / "locks" / "gc-1.json").write_text(json.dumps({"since": time.time()}))
    monkeypatch.setattr(publish.time, "sleep", lambda _s: None)
    with pytest.raises(RuntimeError) as caught:
        publish.publish_step(_target(root), "make", "done", {}, {}, {}, {}, time.time())
    assert "gc" in str(caught.value) and "\n" not in str(caught.value)
    assert not (root / "runs").exists(), "nothing is published while the gc holds the store"
    assert not list((root / "locks").glob("writer-*")), "the step's lease is gone"


def test_a_lease_deleted_while_listed_is_not_an_error(tmp_path, monkeypatch):
    folder = publish._Folder(str(tmp_path))
    (tmp_path / "locks").mkdir()
    gone = tmp_path / "locks" / "gc-gone.json"
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter([*real_iterdir(self), gone]))
    assert folder.live("locks/gc-") is False
