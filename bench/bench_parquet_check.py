"""Cost of parquet's exactness check on a 1M-row frame with object columns, side by side with a baseline.

    python bench/bench_parquet_check.py [--baseline REF]    # REF: a git ref whose parquet.py is compared (main)

Times ``parquet.table()`` (Arrow conversion + the check) and the whole ``marshal.save`` for this tree and for
the baseline's ``parquet.py`` (loaded from git into the same package), best of ``--repeat``, in one run.
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


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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
        results = {}
        for label, module in (("baseline " + args.baseline, old), ("this tree", parquet)):
            assert module.table(df) is not None
            t_table = best(lambda m=module: m.table(df), args.repeat)

            def save(m=module) -> None:
                d = work / "v"
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
                original, marshal.parquet.table = marshal.parquet.table, m.table
                try:
                    assert marshal.save(df, d, "df")["format"] == "parquet"
                finally:
                    marshal.parquet.table = original

            t_save = best(save, args.repeat)
            results[label] = (t_table, t_save)
            print(f"  {label:<16} table() {t_table:6.3f} s   save {t_save:6.3f} s", flush=True)
        (bt, bs), (nt, ns) = results.values()
        print(f"  ratio this/baseline: table() {nt / bt:.2f}x, save {ns / bs:.2f}x (check adds {nt - bt:+.3f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
