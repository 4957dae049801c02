"""Save+load throughput of nbmagic's typed marshalling vs plain dill, side by side in one run.

    python bench/bench_marshal.py            # numpy 500 MB, pandas 1M rows x 20 columns
    python bench/bench_marshal.py --full     # adds numpy 1 GB

Both sides write to files in the same directory. Before every timed operation the previous files are removed
and the page cache is flushed (``os.sync``, not timed), so neither side pays for the other's dirty pages.
Throughput = value size / (save time + load time), best of ``--repeat`` rounds; ratios are dill time / ours.
Our load verifies the full content hash (the default); numpy loads memory-mapped (the default) and,
for comparison, into fresh memory (``mmap=False``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dill  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nbmagic.runtime import marshal  # noqa: E402
from nbmagic.runtime.marshal.base import hash_algorithm  # noqa: E402

MB = 1e6


def numpy_value(nbytes: int) -> np.ndarray:
    return np.random.default_rng(0).random(nbytes // 8)


def pandas_value(rows: int = 1_000_000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {f"f{i}": rng.random(rows) for i in range(14)}
    cols.update({f"i{i}": rng.integers(0, 1_000_000, rows) for i in range(3)})
    cols["flag"] = rng.random(rows) > 0.5
    cols["when"] = pd.date_range("2024-01-01", periods=rows, freq="s")
    cols["cat"] = pd.Categorical(rng.choice(["red", "green", "blue", "grey"], rows))
    return pd.DataFrame(cols)


def size_of(obj: Any) -> int:
    return int(obj.memory_usage(deep=True).sum()) if isinstance(obj, pd.DataFrame) else obj.nbytes


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    os.sync()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_case(label: str, obj: Any, work: Path, repeat: int, variants: list[tuple[str, dict, dict]]) -> list[dict]:
    rows = []
    size = size_of(obj)
    results: dict[str, list[tuple[float, float]]] = {v[0]: [] for v in variants}
    results["dill"] = []
    for _ in range(repeat):
        for vname, save_kw, load_kw in variants:
            d = work / "ours"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            ts, manifest = timed(lambda: marshal.save(obj, d, "value", **save_kw))
            tl, back = timed(lambda: marshal.load(d, **load_kw))
            results[vname].append((ts, tl))
            fmt = manifest["format"]
            del back
        p = work / "value.dill"
        if p.exists():
            p.unlink()

        def dump() -> None:
            with open(p, "wb") as f:
                dill.dump(obj, f)

        def load() -> Any:
            with open(p, "rb") as f:
                return dill.load(f)

        ts, _ = timed(dump)
        tl, back = timed(load)
        results["dill"].append((ts, tl))
        del back
    # correctness, outside the timings
    back = marshal.load(work / "ours")
    if isinstance(obj, pd.DataFrame):
        pd.testing.assert_frame_equal(back, obj)
    else:
        assert np.array_equal(back, obj)
    del back
    dill_best = min(s + l for s, l in results["dill"])
    for vname, runs in results.items():
        best = min(runs, key=lambda r: r[0] + r[1])
        total = best[0] + best[1]
        rows.append(
            {
                "case": label,
                "variant": vname,
                "size_mb": size / MB,
                "save_s": best[0],
                "load_s": best[1],
                "total_s": total,
                "median_total_s": statistics.median(s + l for s, l in runs),
                "mb_s": size / MB / total,
                "x_dill": dill_best / total,
            }
        )
    print(f"  ({label}: ours stored as {fmt})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also numpy 1 GB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-marshal-", dir=args.dir))
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"dill {dill.__version__}, hash {hash_algorithm()}, {os.cpu_count()} cpus, dir {work}"
    )
    rows: list[dict] = []
    try:
        sizes = [500 << 20] + ([1 << 30] if args.full else [])
        for nbytes in sizes:
            arr = numpy_value(nbytes)
            rows += run_case(
                f"numpy {nbytes >> 20} MiB float64",
                arr,
                work,
                args.repeat,
                [("ours (mmap)", {}, {}), ("ours (mmap=False)", {}, {"mmap": False})],
            )
            del arr
        df = pandas_value()
        rows += run_case(
            "pandas 1M x 20",
            df,
            work,
            args.repeat,
            [("ours (parquet, default)", {}, {}), ("ours (pandas_format=pickle)", {"pandas_format": "pickle"}, {})],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = (
        f"{'case':24} {'variant':28} {'MB':>7} {'save s':>7} {'load s':>7} {'total s':>8} {'median':>7} "
        f"{'MB/s':>7} {'x dill':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['case']:24} {r['variant']:28} {r['size_mb']:7.0f} {r['save_s']:7.3f} {r['load_s']:7.3f} "
            f"{r['total_s']:8.3f} {r['median_total_s']:7.3f} {r['mb_s']:7.0f} {r['x_dill']:7.2f}"
        )


if __name__ == "__main__":
    main()
