"""The store's clock: a store that cannot be probed (e.g. read-only credentials) is probed once per
``CLOCK_TTL_S``, not on every call, and this machine's clock is used meanwhile."""

from __future__ import annotations

import time

import pytest

from nbmagic.store import backends
from nbmagic.store.backends import Backend, RemoteError


class _Refusing(Backend):
    def __init__(self, fail: bool) -> None:
        self.fail, self.probes = fail, 0

    def _probe_clock(self) -> float | None:
        self.probes += 1
        if self.fail:
            raise RemoteError("shared store: write refused (read-only credentials)")
        return None  # what the Cloud Storage backend answers when its probe upload is refused


@pytest.mark.parametrize("fail", [True, False])
def test_a_failed_clock_probe_is_kept_for_the_ttl(monkeypatch, fail):
    real = time.time
    shift = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + shift[0])
    backend = _Refusing(fail)
    stamps = [backend.now() for _ in range(5)]
    assert backend.probes == 1
    assert all(abs(s - real()) < 5 for s in stamps)  # this machine's clock meanwhile
    shift[0] = backends.CLOCK_TTL_S + 1
    backend.now()
    backend.now()
    assert backend.probes == 2  # probed again once the TTL is over
