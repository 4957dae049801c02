"""Content-addressed object store: dedup, integrity, deletion, crash safety and concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbmagic.errors import NbMagicError
from nbmagic.store.objects import ObjectStore, StoreError, ValueRef


@pytest.fixture
def store(tmp_path):
    return ObjectStore(tmp_path / "store")


def _object_dirs(store: ObjectStore) -> list[Path]:
    return sorted(p for p in store.objects_dir.glob("*/*"))


def test_put_get_and_ref(store):
    arr = np.arange(100.0)
    ref = store.put(arr, "weights")
    assert isinstance(ref, ValueRef) and ref.name == "weights" and ref.type == "numpy.ndarray"
    assert ref.format == "npy" and ref.size == store.size(ref.hash) > 800
    assert (store.objects_dir / ref.hash[:2] / ref.hash).is_dir()
    np.testing.assert_array_equal(store.get(ref), arr)
    np.testing.assert_array_equal(store.get(ref.hash), arr)
    assert store.manifest(ref.hash)["hash"] == ref.hash
    assert ValueRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(AttributeError):
        ref.hash = "x"  # frozen


def test_identical_values_are_stored_once(store):
    df = pd.DataFrame({"a": np.arange(1000), "b": np.random.default_rng(0).random(1000)})
    refs = [store.put(df.copy(), f"df{i}") for i in range(5)]
    refs += [store.put(np.arange(50), "a"), store.put(np.arange(50), "b")]
    assert len({r.hash for r in refs[:5]}) == 1
    assert refs[5].hash == refs[6].hash and refs[6].name == "b"
    assert sorted(store.iter_hashes()) == sorted({refs[0].hash, refs[5].hash})
    assert len(_object_dirs(store)) == 2
    assert list(store.tmp_dir.iterdir()) == []


def test_different_types_with_same_bytes_are_different_objects(store):
    a = store.put(np.array(2.0), "a")
    s = store.put(np.float64(2.0), "s")
    assert a.hash != s.hash
    assert type(store.get(s)) is np.float64 and type(store.get(a)) is np.ndarray


def test_stored_files_are_read_only(store):
    ref = store.put({"k": [1, 2]}, "cfg")
    for f in (store.objects_dir / ref.hash[:2] / ref.hash).iterdir():
        assert f.stat().st_mode & 0o222 == 0


def test_tampered_object_is_an_error_naming_the_value(store):
    ref = store.put(np.arange(1000.0), "weights")
    data = store.objects_dir / ref.hash[:2] / ref.hash / "value.npy"
    data.chmod(0o644)
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="stored value 'weights' is corrupt") as info:
        store.get(ref)
    assert isinstance(info.value, NbMagicError)


def test_object_moved_under_another_hash_is_detected(store):
    a = store.put([1, 2, 3], "a")
    b = store.put([4, 5, 6], "b")
    pa = store.objects_dir / a.hash[:2] / a.hash
    pb = store.objects_dir / b.hash[:2] / b.hash
    for f in pa.iterdir():
        f.chmod(0o644)
        f.unlink()
    for f in pb.iterdir():
        (pa / f.name).write_bytes(f.read_bytes())
    with pytest.raises(StoreError, match="'a' is corrupt"):
        store.get(a)


def test_missing_value_and_bad_hash(store):
    with pytest.raises(StoreError, match="'model' is not in the store"):
        store.get("ab" * 16, name="model")
    with pytest.raises(StoreError, match="not a value hash"):
        store.get("../../etc")
    assert not store.exists("cd" * 16)
    assert not store.delete("cd" * 16)


def test_delete(store):
    ref = store.put("text", "s")
    keep = store.put("other", "t")
    assert store.delete(ref.hash) and not store.exists(ref.hash)
    assert list(store.iter_hashes()) == [keep.hash]
    assert list(store.tmp_dir.iterdir()) == []
    again = store.put("text", "s")  # can be stored again
    assert again.hash == ref.hash and store.get(again) == "text"


def test_unserializable_value_leaves_nothing_behind(store):
    with pytest.raises(StoreError, match="cannot store variable 'g' of type generator"):
        store.put((i for i in range(3)), "g")
    assert list(store.iter_hashes()) == [] and list(store.tmp_dir.iterdir()) == []


def test_unused_fresh_tmp_dirs_are_kept_and_old_ones_swept(store):
    store.tmp_dir.mkdir(parents=True)
    old = store.tmp_dir / "w-999999999-deadbeef-0001"  # another host's writer, long gone
    old.mkdir()
    (old / "value.npy").write_bytes(b"partial")
    past = time.time() - 7200
    os.utime(old / "value.npy", (past, past))
    os.utime(old, (past, past))
    fresh = store.tmp_dir / "w-999999999-deadbeef-0002"
    fresh.mkdir()
    assert store.sweep_tmp(3600) == 1
    assert not old.exists() and fresh.exists()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nbmagic.store.objects import ObjectStore

    class Slow:
        def __reduce__(self):
            Path(sys.argv[2]).write_text("writing")
            time.sleep(60)
            return (Slow, ())

    ObjectStore(sys.argv[1]).put({"payload": b"x" * 1_000_000, "slow": Slow()}, "slow")
""")


def test_kill_9_mid_write_leaves_only_a_tmp_dir(store, tmp_path):
    flag = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(store.root), str(flag)])
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None and time.time() < deadline, "writer did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert list(store.iter_hashes()) == []
    leftovers = list(store.tmp_dir.iterdir())
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())
    assert store.sweep_tmp(older_than_s=0) == 1
    assert list(store.tmp_dir.iterdir()) == []
    ref = store.put({"payload": b"x"}, "after")
    assert store.get(ref) == {"payload": b"x"}


def _put_same(root: str, barrier, seed: int, q) -> None:
    store = ObjectStore(root)
    value = {"arr": np.random.default_rng(seed).random(200_000), "tag": "shared"}
    barrier.wait()
    refs = [store.put(value, "v").hash]
    barrier.wait()
    refs.append(store.put(np.arange(300_000.0), "arr").hash)
    q.put(refs)


def test_concurrent_puts_from_processes(store):
    ctx = mp.get_context("spawn")
    n = 4
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_put_same, args=(str(store.root), barrier, 7, q)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({tuple(r) for r in results}) == 1
    assert sorted(store.iter_hashes()) == sorted(results[0])
    assert list(store.tmp_dir.iterdir()) == []
    got = store.get(results[0][0])
    np.testing.assert_array_equal(got["arr"], np.random.default_rng(7).random(200_000))
    np.testing.assert_array_equal(store.get(results[0][1]), np.arange(300_000.0))
