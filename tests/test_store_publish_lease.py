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


def test_a_step_writes_to_a_group_shared_folder_with_the_folders_group_bits(tmp_path, monkeypatch):
    from helpers.store_homes import saved_value

    root = tmp_path / "shared"
    root.mkdir(mode=0o700)
    root.chmod(0o2770)  # shared with a group, as the README shows
    value = saved_value(tmp_path)
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    publish.publish_step(_target(root), "make", "done", {}, {}, {"x": value}, {}, time.time())
    written = [p for p in root.rglob("*") if p.name != "tmp"]
    assert written and all(p.stat().st_mode & 0o007 == 0 for p in written), "others never get access"
    files = [p for p in written if p.is_file()]
    assert files and all(p.stat().st_mode & 0o060 == 0o060 for p in files), [oct(p.stat().st_mode) for p in files]
    assert all(p.stat().st_mode & 0o070 == 0o070 for p in written if p.is_dir())
