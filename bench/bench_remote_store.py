"""The shared run store on S3 (moto's S3 server on 127.0.0.1), side by side with its baselines.

1. save + load of one large float64 array (default 500 MB):
   - local store: ``ObjectStore.put`` then ``get`` (memory-mapped, hash-checked);
   - S3 store: the same put, then the upload (``RemoteStore.push_object``); load in a second home = pull into
     its local cache (hash-checked) + ``get``; a second load comes from that cache;
   - baseline: ``s3fs`` writing ``pickle.dumps(array)`` to the same server and reading it back.
2. ``%runs`` (``api.runs()``) over 10,000 runs in the shared store, published by 16 writers at once (each its own
   client and memory), two ways side by side: every record left loose (the previous way: a fresh home reads each
   one), and the store's way (a writer holding ``COMPACT_EVERY`` loose records folds them into a segment, and a
   kernel syncing every 2 s meanwhile folds what it read once it lists ``READER_COMPACT_AT``); then the
   first sync of a fresh home each way, ``runs()`` once synced (a sync lists every loose record and segment: no
   window by anyone's clock), a shared gc merging all segments into one, and a fresh home after it.

    python bench/bench_remote_store.py [--mb 500] [--runs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_array(mb: int, store_env: dict) -> list[tuple[str, float, float]]:
    import pickle

    import numpy as np
    import s3fs

    from nbmagic.store.objects import ObjectStore
    from nbmagic.store.runs import RunStore

    array = np.random.default_rng(0).random(mb * (1 << 20) // 8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = ObjectStore(Path(tmp) / "local")
        save, ref = timed(lambda: local.put(array, "big"))
        load, back = timed(lambda: float(local.get(ref).sum()))
        rows.append(("local store (npy, mmap)", save, load))

        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "alice")
        alice = RunStore()
        put, ref = timed(lambda: alice.objects.put(array, "big"))
        upload, _ = timed(lambda: alice.remote.push_object(alice.objects, ref.hash))
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "bob")
        bob = RunStore()
        pull, total = timed(lambda: float(bob.objects.get(ref.hash, "big").sum()))
        again, _ = timed(lambda: float(bob.objects.get(ref.hash, "big").sum()))
        assert total == back
        rows.append(("S3 store (put + upload; pull + load)", put + upload, pull))
        rows.append(("S3 store, second load (local cache)", 0.0, again))

        fs = s3fs.S3FileSystem(
            key=store_env["AWS_ACCESS_KEY_ID"],
            secret=store_env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": store_env["AWS_ENDPOINT_URL"], "region_name": "us-east-1"},
        )
        path = store_env["NBMAGIC_STORE_URI"].removeprefix("s3://") + "/baseline/big.pkl"

        def write() -> None:
            with fs.open(path, "wb") as f:
                f.write(pickle.dumps(array, protocol=5))

        def read() -> float:
            with fs.open(path, "rb") as f:
                return float(pickle.loads(f.read()).sum())

        save, _ = timed(write)
        load, total = timed(read)
        assert total == back
        rows.append(("s3fs + pickle (baseline)", save, load))
    return rows


def bench_runs(n: int, writers: int = 16) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from helpers.plans import step
    from nbmagic import api
    from nbmagic.pipeline.model import PipelinePlan
    from nbmagic.run.local import LocalRunner
    from nbmagic.store import remote
    from nbmagic.store.gc import Policy, collect
    from nbmagic.store.remote import RemoteStore
    from nbmagic.store.runs import RunStore
    from nbmagic.store_uri import parse

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "writer")
        writer = RunStore()
        plan = PipelinePlan("demo", (step("train", "acc = 0.5", outputs=("acc",), metrics=("acc",)),), {}, ("acc",))
        template = writer.export_run(LocalRunner(writer).run(plan).id)
        uri = os.environ["NBMAGIC_STORE_URI"]
        now = time.time()

        def record(i: int, tag: str) -> tuple[str, dict]:
            rec = json.loads(json.dumps(template))
            run_id = f"{tag}-{i:06d}-{i:06x}"
            rec["run"].update(id=run_id, started=now - (n - i), metrics={"acc": (i * 7919 % 1000) / 1000})
            return f"runs/{int((now - n + i) * 1000):013d}-{run_id}.json", rec

        def publish_all(tag: str, fold: bool) -> float:
            stores = [RemoteStore(parse(uri)) for _ in range(writers)]  # each writer its own client and memory

            def one(w: int) -> None:
                for i in range(w, n, writers):
                    key, rec = record(i, tag)
                    stores[w].put_record(key, rec)
                    if fold:
                        stores[w].fold_if_due(key)

            return timed(lambda: list(ThreadPoolExecutor(writers).map(one, range(writers))))[0]

        def first_sync(home: str) -> float:
            os.environ["NBMAGIC_HOME"] = str(Path(tmp) / home)
            took, table = timed(lambda: api.runs(limit=0))
            assert table.total >= n, table.total
            return took

        # the previous way: nobody folds, so a fresh home reads every loose record (16 GETs in flight)
        figures["write_loose"] = publish_all("loose", fold=False)
        figures["first_loose"] = first_sync("reader-loose")
        for blob in list(writer.remote.backend.list("runs/")):  # a fresh bucket prefix for the second way
            writer.remote.backend.delete(blob.key)
        for blob in list(writer.remote.backend.list("index/")):
            writer.remote.backend.delete(blob.key)
        # now: a writer holding COMPACT_EVERY loose records folds them into a segment (no GET); a kernel that
        # syncs meanwhile (every 2 s, as %runs would) folds what it read once it lists READER_COMPACT_AT
        import threading

        done = threading.Event()

        def kernel() -> None:
            store = RunStore(Path(tmp) / "kernel" / "store")
            while not done.wait(2.0):
                store.sync(force=True)

        watcher = threading.Thread(target=kernel)
        watcher.start()
        figures["write_fold"] = publish_all("fold", fold=True)
        done.set()
        watcher.join()
        figures["loose_left"] = len([b for b in writer.remote.backend.list("runs/")])
        figures["segments"] = len(writer.remote.segments())
        figures["first_fold"] = first_sync("reader")
        figures["cached"] = sorted(timed(lambda: api.runs())[0] for _ in range(5))[2]
        figures["compact"] = timed(lambda: collect(RunStore(), Policy(), shared=True))[0]  # merges all segments
        figures["first_gc"] = first_sync("newcomer")
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "reader")
        local_only = dict(os.environ)
        os.environ.pop("NBMAGIC_STORE_URI")
        figures["local"] = sorted(timed(lambda: api.runs())[0] for _ in range(5))[2]
        os.environ.clear()
        os.environ.update(local_only)
        figures["every"] = remote.COMPACT_EVERY
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--skip-array", action="store_true", help="only the %%runs part")
    args = parser.parse_args()
    from helpers.s3 import moto_process, new_store

    endpoint, server = moto_process()
    store = new_store(endpoint=endpoint)
    os.environ.update(store.env())
    print(f"S3 API: moto server (its own process) on {store.endpoint} (loopback), store {store.uri}")
    if not args.skip_array:
        print(f"\n{args.mb} MB float64 array: save and load")
        print("| path | save | load | load vs local |\n|---|---|---|---|")
        rows = bench_array(args.mb, store.env())
        local_load = rows[0][2]
        for name, save, load in rows:
            print(f"| {name} | {save:.2f} s | {load:.2f} s | {load / local_load:.1f}x |")
    f = bench_runs(args.runs)
    print(f"\n%runs over {args.runs} runs in the shared store (16 writers, each its own client)")
    print(f"| way | publishing {args.runs} records | first %runs in a fresh home |\n|---|---|---|")
    print(
        f"| previous: loose records only, one GET each (16 in flight) | {f['write_loose']:.1f} s | {f['first_loose']:.1f} s |"
    )
    print(
        f"| now: writers fold every {f['every']:.0f} loose records they hold, a kernel syncing every 2 s folds what it"
        f" read ({f['segments']:.0f} segments,"
        f" {f['loose_left']:.0f} loose left) | {f['write_fold']:.1f} s | {f['first_fold']:.1f} s"
        f" ({f['first_loose'] / f['first_fold']:.0f}x faster) |"
    )
    print(f"- a shared gc (nothing to drop) merging everything into one segment: {f['compact']:.1f} s")
    print(f"- first %runs in a fresh home after that gc: {f['first_gc']:.1f} s")
    print(
        f"- %runs once synced (lists every loose record and segment; median of 5): {f['cached']:.2f} s (target < 2 s)"
    )
    print(f"- %runs of the same index with no shared store (baseline; median of 5): {f['local']:.2f} s")
    server.terminate()


if __name__ == "__main__":
    main()
