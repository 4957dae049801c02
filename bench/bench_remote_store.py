"""The shared run store on S3 (moto's S3 server on 127.0.0.1), side by side with its baselines.

1. save + load of one large float64 array (default 500 MB):
   - local store: ``ObjectStore.put`` then ``get`` (memory-mapped, hash-checked);
   - S3 store: the same put, then the upload (``RemoteStore.push_object``); load in a second home = pull into
     its local cache (hash-checked) + ``get``; a second load comes from that cache;
   - baseline: ``s3fs`` writing ``pickle.dumps(array)`` to the same server and reading it back.
2. ``%runs`` (``api.runs()``) over 10,000 runs in the shared store: records written straight to the bucket in
   the store's format (signed), then the first sync from an empty home, a shared gc (which writes a compacted index),
   the first sync of another empty home from that index, then ``runs()`` once the index is cached. Records are stamped one second
   apart (10,000 runs over the last ~2.8 hours); a cached sync lists the keys stamped after its previous listing
   began, less 10 minutes (its clock), and compares them with those seen.

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


def bench_runs(n: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    from helpers.plans import step
    from nbmagic import api
    from nbmagic.pipeline.model import PipelinePlan
    from nbmagic.run.local import LocalRunner
    from nbmagic.store.remote import _canonical, _sign
    from nbmagic.store.runs import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "writer")
        writer = RunStore()
        plan = PipelinePlan("demo", (step("train", "acc = 0.5", outputs=("acc",), metrics=("acc",)),), {}, ("acc",))
        template = writer.export_run(LocalRunner(writer).run(plan).id)
        now = time.time()

        def put(i: int) -> None:
            record = json.loads(json.dumps(template))
            run_id = f"20250101-{i:06d}-{i:06x}"
            record["run"].update(id=run_id, started=now - (n - i), metrics={"acc": (i * 7919 % 1000) / 1000})
            body = {"record": record, "sig": _sign(writer.remote.key, _canonical(record))}
            key = f"runs/{int((now - n + i) * 1000):013d}-{run_id}.json"
            writer.remote.backend.put_bytes(key, json.dumps(body).encode())

        built, _ = timed(lambda: list(ThreadPoolExecutor(16).map(put, range(n))))
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "reader")
        first, table = timed(lambda: api.runs(limit=0))
        assert table.total >= n, table.total
        repeats = sorted(timed(lambda: api.runs())[0] for _ in range(5))
        cached = repeats[len(repeats) // 2]
        from nbmagic.store.gc import Policy, collect

        compact, _ = timed(lambda: collect(RunStore(), Policy(), shared=True))  # gc writes the compacted index
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "newcomer")
        indexed, table = timed(lambda: api.runs(limit=0))
        assert table.total >= n, table.total
        os.environ["NBMAGIC_HOME"] = str(Path(tmp) / "reader")
        local_only = dict(os.environ)
        os.environ.pop("NBMAGIC_STORE_URI")
        baseline = sorted(timed(lambda: api.runs())[0] for _ in range(5))[2]
        os.environ.clear()
        os.environ.update(local_only)
        return {
            "write": built,
            "first": first,
            "cached": cached,
            "local": baseline,
            "compact": compact,
            "indexed": indexed,
        }


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
    figures = bench_runs(args.runs)
    print(f"\n%runs over {args.runs} runs in the shared store")
    print(f"- writing {args.runs} records to the bucket (16 threads): {figures['write']:.1f} s")
    print(f"- first %runs from an empty home (imports every record): {figures['first']:.1f} s")
    print(f"- a shared gc (nothing to drop) writing the compacted index: {figures['compact']:.1f} s")
    print(f"- first %runs from an empty home, after that gc (one GET of the index): {figures['indexed']:.1f} s")
    print(
        f"- %runs once the index is cached (lists keys of the last 10 min; median of 5): {figures['cached']:.2f} s (target < 2 s)"
    )
    print(f"- %runs of the same index with no shared store (baseline; median of 5): {figures['local']:.2f} s")
    server.terminate()


if __name__ == "__main__":
    main()
