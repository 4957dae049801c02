"""The heartbeat of a running step: its store client is made in the step's thread, stopping it waits for a beat
under way, and a heartbeat that cannot be written never fails the step."""

from __future__ import annotations

import threading
import time

from helpers.store_homes import saved_value
from nbmagic.runtime import publish


class _NoLive(publish._Folder):
    """A shared folder where ``live/`` cannot be written (e.g. a policy that denies that prefix)."""

    def put(self, key, source=None, data=None, if_absent=False):  # noqa: ANN001
        if key.startswith("live/"):
            raise PermissionError("live/ is read-only here")
        return super().put(key, source=source, data=data, if_absent=if_absent)


def test_a_heartbeat_that_cannot_be_written_does_not_fail_the_step(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "_backend", lambda uri: _NoLive(str(tmp_path / "shared")))
    folder = saved_value(tmp_path)
    target = {"uri": f"file://{tmp_path / 'shared'}", "run": "run-a", "pipeline": "p", "steps": ["a"]}
    key = publish.publish_step(target, "a", "done", {}, {}, {"x": folder}, {}, time.time())
    assert (tmp_path / "shared" / key).is_file()
    assert not (tmp_path / "shared" / "live").exists()


def test_the_heartbeat_client_is_made_in_the_calling_thread_and_stop_joins(tmp_path, monkeypatch):
    made_in: list[threading.Thread] = []
    real = publish._backend

    def backend(uri: str):  # noqa: ANN202
        made_in.append(threading.current_thread())
        return real(uri)

    monkeypatch.setattr(publish, "_backend", backend)
    monkeypatch.setattr(publish, "HEARTBEAT_S", 0.05)
    stop = publish.heartbeat({"uri": f"file://{tmp_path / 'shared'}", "run": "run-b"})
    time.sleep(0.3)
    stop()
    assert made_in == [threading.current_thread()]
    assert not [t for t in threading.enumerate() if t.name == "nbmagic-heartbeat"]
    assert (tmp_path / "shared" / "live" / "run-b.json").is_file()
