"""On Cloud Storage a compiled step judges the gc's lease by the server's clock (a probe object's time stamp),
not by its own: a pod whose clock runs 11 minutes ahead still sees a gc that holds the store."""

from __future__ import annotations

import time

import pytest

from nbmagic.runtime import publish


@pytest.mark.slow
def test_a_gs_lease_written_now_is_live_for_a_pod_whose_clock_is_ahead(gcs_store, monkeypatch):
    store = publish._backend(gcs_store.uri)
    store.put("locks/gc-1.json", data=b"{}")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 660)
    assert store.live("locks/gc-") is True
    assert abs(store.now() - real()) < 60, "the server's clock, not this machine's"
    assert not gcs_store.keys("team/runs/tmp/"), "the clock probe is removed"
