"""A lease is gone once its holder is done, even when its renewal was under way at that moment."""

from __future__ import annotations

import threading
import time

from helpers.store_homes import shared_folder
from nbmagic.store import remote
from nbmagic.store.runs import RunStore


def test_a_renewal_in_flight_does_not_bring_a_released_lease_back(tmp_path, monkeypatch):
    shared = shared_folder(tmp_path, monkeypatch)
    monkeypatch.setattr(remote, "RENEW_S", 0.05)
    store = RunStore(tmp_path / "home" / "store").remote
    put = store.backend.put_bytes
    renewing = threading.Event()

    def slow_put(key: str, data: bytes, **kw):  # noqa: ANN202
        if threading.current_thread().name == "nbmagic-store-lease":
            renewing.set()
            time.sleep(0.5)
        return put(key, data, **kw)

    store.backend.put_bytes = slow_put
    with store.lease("writer"):
        assert renewing.wait(5)
    time.sleep(1.0)
    assert not list((shared / "locks").glob("writer-*")), "the released lease stays released"
