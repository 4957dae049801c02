"""Loading a stored DataFrame: writable frames (consolidated blocks pandas owns) vs the former zero-copy read
(one read-only Arrow block per column), side by side in one run.

    python bench/bench_parquet_load.py [--repeat 5]

Cases: 1M rows x 10 float64 columns; 1M rows x (4 float64 + 2 string) columns; 100k rows x 10 float64
(one Arrow chunk per column: the former read handed these out read-only). Each variant reads the same
``value.parquet`` (page cache warm, after one untimed read); times are the best of ``--repeat``. "load" is the
whole ``marshal.load`` (hash verification included); its MB/s is the frame's in-memory size over that time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from nbmagic.runtime import marshal  # noqa: E402
from nbmagic.runtime.marshal import parquet  # noqa: E402


def frames(rows: int = 1_000_000) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    floats = pd.DataFrame({f"f{i}": rng.random(rows) for i in range(10)})
    strings = pd.DataFrame(
        {
            **{f"f{i}": rng.random(rows) for i in range(4)},
            "colour": rng.choice(["red", "green", "blue"], rows).astype(object),
            "id": [f"id{i}" for i in range(rows)],
        }
    )
    small = floats.iloc[: rows // 10].copy()
    return {"1M x 10 float64": floats, "1M x (4 float64 + 2 str)": strings, "100k x 10 float64": small}


def zero_copy(directory: Path) -> Any:
    """The former read: one block per column over Arrow's memory (read-only)."""
    arrow = pq.read_table(directory / parquet.FILE, memory_map=True)
    df = arrow.to_pandas(split_blocks=arrow.num_columns <= 100, self_destruct=True)
    del arrow
    return df


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    fn()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def writable(df: pd.DataFrame) -> bool:
    try:
        df.iloc[0, 0] = df.iloc[0, 0]
    except ValueError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, pandas {pd.__version__}, pyarrow {pa.__version__}")
    work = Path(tempfile.mkdtemp(prefix="bench-parquet-load-"))
    head = f"{'case':26} {'variant':34} {'read s':>7} {'load s':>7} {'load MB/s':>9} {'writable':>8}"
    lines = [head, "-" * len(head)]
    try:
        for label, df in frames().items():
            directory = work / label.replace(" ", "_")
            directory.mkdir()
            assert marshal.save(df, directory, "value")["format"] == "parquet"
            size = df.memory_usage(deep=True).sum() / 1e6
            old_read, old = best(lambda d=directory: zero_copy(d), args.repeat)
            new_read, _ = best(lambda d=directory: parquet.read(d, {}, True), args.repeat)
            new_load, new = best(lambda d=directory: marshal.load(d), args.repeat)
            pd.testing.assert_frame_equal(new, df)
            lines.append(f"{label:26} {'zero-copy (before)':34} {old_read:7.3f} {'':>7} {'':>9} {writable(old)!s:>8}")
            lines.append(
                f"{label:26} {'writable (now)':34} {new_read:7.3f} {new_load:7.3f} {size / new_load:9.0f}"
                f" {writable(new)!s:>8}"
            )
            lines.append(f"{label:26} {'read time now / before':34} {new_read / old_read:7.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
