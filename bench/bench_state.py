"""%runs and %gc over 10,000 runs (targets: %runs < 1 s, %gc < 10 s).

Runs are written straight into the index (two steps each, one shared and one own value, cache entries, run
folders with a log) so building the store takes seconds; then the real magics are timed in an InteractiveShell.
Reference: a bare ``SELECT`` of every run row (the floor any listing pays).

    python bench/bench_state.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path


def build(store, n: int) -> None:
    shared = store.objects.put(list(range(100)), "data")
    refs = [store.objects.put(i * 0.5, "model") for i in range(n)]
    now = time.time()
    conn = store._connection()
    conn.execute("BEGIN IMMEDIATE")
    data_aid = conn.execute(
        "INSERT INTO artifacts(hash, type, format, size, created) VALUES (?,?,?,?,?)",
        (shared.hash, shared.type, shared.format, shared.size, now),
    ).lastrowid
    for i, ref in enumerate(refs):
        run_id = f"20250101-{i:06d}-{i:06x}"
        started = now - (n - i) * 60
        params = {"lr": round(0.001 * (i % 100 + 1), 4), "kind": ("svm", "mlp")[i % 2]}
        metrics = {"val_loss": (i * 7919 % 1000) / 1000, "acc": (i * 104729 % 1000) / 1000}
        ctx = conn.execute(
            "INSERT INTO contexts(type, name, properties, created) VALUES ('run', ?, '{}', ?)", (run_id, started)
        ).lastrowid
        conn.execute(
            "INSERT INTO runs(id, pipeline, status, kind, parameters, metrics, started, ended, steps, cached, context_id)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, "demo", "done", "local", json.dumps(params), json.dumps(metrics), started, started + 3, 2, 1, ctx),
        )
        load = conn.execute(
            "INSERT INTO executions(run_id, step, state, cached, cache_key, started, ended, properties) VALUES (?,?,?,?,?,?,?,?)",
            (run_id, "load", "cached" if i else "done", 1 if i else 0, "k-load", started, started + 1, "{}"),
        ).lastrowid
        train = conn.execute(
            "INSERT INTO executions(run_id, step, state, cached, cache_key, started, ended, properties) VALUES (?,?,?,?,?,?,?,?)",
            (run_id, "train", "done", 0, f"k-train-{i}", started + 1, started + 3, json.dumps({"parameters": params})),
        ).lastrowid
        aid = conn.execute(
            "INSERT INTO artifacts(hash, type, format, size, created) VALUES (?,?,?,?,?)",
            (ref.hash, ref.type, ref.format, ref.size, started),
        ).lastrowid
        conn.executemany(
            "INSERT INTO events VALUES (?,?,?,?)",
            [(load, data_aid, "OUTPUT", "data"), (train, data_aid, "INPUT", "data"), (train, aid, "OUTPUT", "model")],
        )
        conn.execute(
            "INSERT INTO cache VALUES (?,?,?,?,?,?,?,?)",
            (f"k-train-{i}", "train", train, json.dumps({"model": ref.to_dict()}), "{}", "{}", started, started),
        )
        if i == 0:
            conn.execute(
                "INSERT INTO cache VALUES (?,?,?,?,?,?,?,?)",
                ("k-load", "load", load, json.dumps({"data": shared.to_dict()}), "{}", "{}", started, started),
            )
        folder = store.root / "runs" / run_id
        folder.mkdir(parents=True)
        (folder / "train.log").write_text("fit done\n")
    conn.execute("COMMIT")
    old = now - 86400  # values are older than gc's grace period
    for ref in refs + [shared]:
        os.utime(store.objects._path(ref.hash), (old, old))


def old_remove_files(store, digests, run_ids) -> None:
    """The baseline: how gc removed files before (a temp folder and an rmtree per value, an rmtree per run)."""
    for digest in digests:
        store.objects.delete(digest)
    for run_id in run_ids:
        shutil.rmtree(store.root / "runs" / run_id, ignore_errors=True)


def gc_side_by_side(n: int, keep: int) -> list[tuple[str, float]]:
    """The same gc on two identical fresh stores: the baseline file removal, then the current one."""
    from nbmagic.store import gc
    from nbmagic.store.runs import RunStore

    current = gc.remove_files
    timings = []
    for label, remove in (("before (a temp folder + rmtree per value)", old_remove_files), ("now", current)):
        store = RunStore(Path(tempfile.mkdtemp(prefix="nbmagic-bench-gc-")) / "store")
        build(store, n)
        gc.remove_files = remove
        try:
            t = time.perf_counter()
            report = gc.collect(store, gc.Policy(keep_last=keep))
            timings.append(
                (f"{label}: removes {len(report.runs)} runs, {len(report.values)} values", time.perf_counter() - t)
            )
        finally:
            gc.remove_files = current
        assert len(store.list_runs()) == keep == len(list((store.root / "runs").iterdir()))
        shutil.rmtree(store.root.parent, ignore_errors=True)
    return timings


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["NBMAGIC_HOME"] = tempfile.mkdtemp(prefix="nbmagic-bench-state-")
    from IPython.core.interactiveshell import InteractiveShell

    from nbmagic.store.runs import RunStore

    store = RunStore()
    t = time.perf_counter()
    build(store, args.runs)
    print(f"built {args.runs} runs in {time.perf_counter() - t:.1f} s ({store.root})")
    ip = InteractiveShell.instance()
    ip.extension_manager.load_extension("nbmagic")

    floor = timed(lambda: sqlite3.connect(store.root / "index.sqlite").execute("SELECT * FROM runs").fetchall())
    rows = []
    for label, line in (
        ("%runs (newest 50)", ""),
        ("%runs --where val_loss<0.3 --sort val_loss", "--where 'val_loss<0.3' --sort val_loss"),
        ("%runs --sort -acc --limit 0 (all rows, text)", "--sort -acc --limit 0"),
    ):

        def run(line=line):
            table = ip.run_line_magic("runs", line)
            table.text()
            table._repr_html_()

        rows.append((label, timed(run), 1.0))
    dry = timed(lambda: ip.run_line_magic("gc", "--keep-last 1000 --dry-run"), repeat=1)
    rows.append(("%gc --keep-last 1000 --dry-run", dry, 10.0))
    t = time.perf_counter()
    report = ip.run_line_magic("gc", "--keep-last 1000")
    rows.append(
        (
            f"%gc --keep-last 1000 (removes {len(report.runs)} runs, {len(report.values)} values)",
            time.perf_counter() - t,
            10.0,
        )
    )
    assert len(store.list_runs()) == 1000 and store.objects.exists(
        store.step_values(store.list_runs()[0].id, "load")["data"]["hash"]
    )

    side = gc_side_by_side(args.runs, 1000)

    print(f"\nreference: SELECT * FROM runs ({args.runs} rows): {floor * 1000:.1f} ms\n")
    print(f"| operation over {args.runs} runs | time | target | time / target | vs bare SELECT |")
    print("|---|---|---|---|---|")
    for label, seconds, target in rows:
        print(
            f"| {label} | {seconds * 1000:.0f} ms | < {target:g} s | {seconds / target:.2f} | {seconds / floor:.0f}x |"
        )

    (old_label, old_s), (new_label, new_s) = side
    print(f"\ngc --keep-last 1000 over {args.runs} runs, file removal side by side (fresh identical stores):\n")
    print("| gc | time | ratio |")
    print("|---|---|---|")
    print(f"| {old_label} | {old_s * 1000:.0f} ms | 1.00 |")
    print(f"| {new_label} | {new_s * 1000:.0f} ms | {new_s / old_s:.2f} ({old_s / new_s:.1f}x faster) |")


if __name__ == "__main__":
    main()
