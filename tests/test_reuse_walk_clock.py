"""The shared-object walk's time bound counts its own work, not the garbage collector's passes."""

from __future__ import annotations

import gc
import time


def test_a_long_garbage_collection_during_the_walk_does_not_make_it_unsure(monkeypatch):
    import nbmagic.run.reuse_links as reuse_links

    monkeypatch.setattr(reuse_links, "TIME_LIMIT", 0.2)
    burnt = []

    def slow_collection(phase, info):  # a full pass over a large heap, as a long-lived kernel has
        if phase == "stop" and not burnt:
            burnt.append(True)
            started = time.thread_time()
            while time.thread_time() - started < 0.4:
                pass

    walk_values = reuse_links._Walk.identities

    def identities(self, value):
        gc.set_threshold(1)  # a collection at the walk's first allocations
        return walk_values(self, value)

    monkeypatch.setattr(reuse_links._Walk, "identities", identities)
    rows = [[i] for i in range(3_000)]  # past 512 objects: the walk reads its clock
    threshold = gc.get_threshold()
    gc.callbacks.insert(0, slow_collection)
    try:
        reason, _ = reuse_links.links({"rows": rows}, {})
    finally:
        gc.callbacks.remove(slow_collection)
        gc.set_threshold(*threshold)
    assert burnt and reason is None


def test_the_walks_own_work_past_its_time_still_makes_it_unsure(monkeypatch):
    import nbmagic.run.reuse_links as reuse_links

    monkeypatch.setattr(reuse_links, "TIME_LIMIT", 0.0)
    threshold = gc.get_threshold()
    gc.disable()
    try:
        reason, _ = reuse_links.links({"rows": [[i] for i in range(5_000)]}, {})
    finally:
        gc.enable()
        gc.set_threshold(*threshold)
    assert reason == "its values take too long to check for shared objects"


def test_comparing_many_overlapping_buffers_is_bounded_by_the_walks_work(monkeypatch):
    import numpy as np

    import nbmagic.run.reuse_links as reuse_links

    monkeypatch.setattr(reuse_links, "LIMIT", 100_000)
    base = np.zeros(20_000)
    suffixes = [base[i:] for i in range(0, 20_000, 4)]  # 5,000 views, each overlapping all before it
    reason, _ = reuse_links.links({"y": np.zeros(3)}, {"views": suffixes})
    assert reason == "its values are too large to check for shared objects"
