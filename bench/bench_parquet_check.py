"""Cost of parquet's exactness check on a 1M-row frame with object columns, side by side with a baseline.

    python bench/bench_parquet_check.py [--baseline REF]    # REF: a git ref whose parquet.py is compared (main)

Times ``parquet.table()`` (Arrow conversion + the check) and the whole ``marshal.save`` for this tree and for
the baseline's ``parquet.py`` (loaded from git into the same package), best of ``--repeat``, interleaved in one
run; and the every-row check alone, wall and CPU time (CPU time is steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nbmagic.runtime import marshal  # noqa: E402
from nbmagic.runtime.marshal import parquet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "f": rng.random(rows),
            "i": rng.integers(0, 1000, rows),
            "when": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "name": [f"user{i % 50_000}" for i in range(rows)],
            "city": rng.choice(["Paris", "Berlin", "Lagos", "Lima"], rows).astype(object),
            "day": [datetime.date(2024, 1, 1) + datetime.timedelta(days=i % 365) for i in range(rows)],
            "price": [decimal.Decimal(i % 10_000).scaleb(-2) for i in range(rows)],
        }
    )


def baseline_module(ref: str):
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:nbmagic/runtime/marshal/parquet.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("nbmagic.runtime.marshal._parquet_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "nbmagic.runtime.marshal"
    exec(compile(source, f"{ref}:parquet.py", "exec"), module.__dict__)  # noqa: S102
    return module


def best(fn, repeat: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    df = frame(args.rows)
    old = baseline_module(args.baseline)
    work = Path(tempfile.mkdtemp(prefix="bench-parquet-check-"))
    print(f"{args.rows} rows: {', '.join(f'{c} {t}' for c, t in df.dtypes.items())}")
    try:
        import pyarrow as pa

        modules = {"baseline " + args.baseline: old, "this tree": parquet}
        for module in modules.values():
            assert module.table(df) is not None
        arrow_only: list[float] = []
        table_times: dict[str, list[float]] = {label: [] for label in modules}
        save_times: dict[str, list[float]] = {label: [] for label in modules}
        for _ in range(args.repeat):  # interleaved, so both sides see the same machine load
            arrow_only.append(best(lambda: pa.Table.from_pandas(df, preserve_index=None), 1))
            for label, module in modules.items():
                table_times[label].append(best(lambda m=module: m.table(df), 1))

                def save(m=module) -> None:
                    d = work / "v"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir()
                    original, marshal.parquet.table = marshal.parquet.table, m.table
                    try:
                        assert marshal.save(df, d, "df")["format"] == "parquet"
                    finally:
                        marshal.parquet.table = original

                save_times[label].append(best(save, 1))
        arrow = pa.Table.from_pandas(df, preserve_index=None)
        check_cpu = best(lambda: parquet._rows_exact(df, arrow), args.repeat, time.process_time)
        check_wall = best(lambda: parquet._rows_exact(df, arrow), args.repeat)
        print(f"  the every-row check alone (_rows_exact): {check_wall:.3f} s wall, {check_cpu:.3f} s CPU")
        for label, module in modules.items():
            cpu = best(lambda m=module: m.table(df), args.repeat, time.process_time)
            print(f"  {label:<16} table() CPU {cpu:6.3f} s")
        base = min(arrow_only)
        print(f"  Arrow conversion alone (pa.Table.from_pandas): {base:.3f} s")
        rows = {}
        for label in modules:
            t_table, t_save = min(table_times[label]), min(save_times[label])
            rows[label] = (t_table, t_save)
            print(f"  {label:<16} table() {t_table:6.3f} s (check {t_table - base:+.3f} s)   save {t_save:6.3f} s")
        (bt, bs), (nt, ns) = rows.values()
        print(f"  ratio this/baseline: table() {nt / bt:.2f}x, save {ns / bs:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
