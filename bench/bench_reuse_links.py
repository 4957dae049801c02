"""Cost of reuse's shared-object walk (``nbmagic.run.reuse_links.links``), this tree against a baseline tree.

Every step the runner runs and every cell run with reuse on pays the walk over the values it stores and reads.
Each side runs in its own interpreter (``PYTHONPATH`` set to its tree); rounds alternate which side goes first.
Figures are the calling thread's CPU time (the least of many calls, so other jobs on the machine weigh little),
and the runner's trivial step (wall time, median of a 10-step chain through the local worker).

    git archive main | tar -x -C /tmp/base
    python bench/bench_reuse_links.py --baseline /tmp/base [--rounds 4] [--out bench/RESULTS-reuse-links.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cases() -> dict:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    arrays = {"X": rng.random((10_000, 20)), "y": rng.integers(0, 2, 10_000)}
    return {
        "three small values": ({"a": 1, "b": [1, 2], "c": {"k": "v"}}, {}, ()),
        "two arrays, numpy imported": (arrays, {}, ("numpy",)),
        "20 float frames (1000x8)": ({f"df{i}": pd.DataFrame(rng.random((1000, 8))) for i in range(20)}, {}, ()),
        "frame with a string column, list of 2000 rows": (
            {
                "df": pd.DataFrame(rng.random((10_000, 8))).assign(s=["x"] * 10_000),
                "rows": [[i, str(i)] for i in range(2000)],
            },
            {},
            (),
        ),
        "step reading a frame, keeping a copied column": (
            {"y": pd.DataFrame(rng.random((10_000, 8)))[0].copy()},
            {"df": pd.DataFrame(rng.random((10_000, 8)))},
            (),
        ),
    }


def child() -> None:
    """Measure this interpreter's nbmagic; print the figures as JSON."""
    os.environ["NBMAGIC_HOME"] = tempfile.mkdtemp()
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_runner import chain, ours

    from nbmagic.run.reuse_links import links

    figures: dict[str, float] = {}
    for name, (assigned, read, modules) in _cases().items():
        took = []
        for _ in range(200):
            start = time.thread_time()
            reason, _ = links(assigned, read, modules)
            took.append(time.thread_time() - start)
        assert reason is None, reason
        figures[name] = min(took)
    ours(chain(3), cache=False)  # the worker warms up
    figures["runner: trivial step (wall, median)"] = statistics.median(
        [ours(chain(10), cache=False) / 10 for _ in range(5)]
    )
    print(json.dumps(figures))


def measure(tree: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a tree of nbmagic to compare with (e.g. main, extracted)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    if not args.baseline:
        parser.error("--baseline is required")
    sys.path.insert(0, str(ROOT / "bench"))
    from rounds import alternate, finish, machine

    sides = (args.baseline, str(ROOT))
    rows = alternate(
        range(args.rounds),
        sides,
        lambda _, side: measure(side),
        lambda key, order, got: f"round {key}: " + ", ".join(f"{Path(s).name}: {got[s]}" for s in order),
    )
    names = list(rows[0][2][sides[0]])
    lines = [
        "## Reuse's shared-object walk: this tree vs the baseline",
        "",
        f"Command: `python bench/bench_reuse_links.py --baseline {args.baseline} --rounds {args.rounds}`",
        machine(),
        "- Walk rows: least CPU time of 200 calls, median over rounds; runner row: wall time, median over rounds.",
        "",
        "| measure | baseline | this tree | ratio (this / baseline) |",
        "|---|---|---|---|",
    ]
    for name in names:
        base = statistics.median(r[2][sides[0]][name] for r in rows)
        ours_ = statistics.median(r[2][sides[1]][name] for r in rows)
        unit, scale = ("ms", 1e3) if base >= 1e-3 else ("us", 1e6)
        lines.append(f"| {name} | {base * scale:.1f} {unit} | {ours_ * scale:.1f} {unit} | {ours_ / base:.2f} |")
    finish(lines, args.out)


if __name__ == "__main__":
    main()
