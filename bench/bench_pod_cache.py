"""Cache hits through the store inside compiled steps: the same pipeline run twice on kfp.local with an S3 store
(moto's S3 server in its own process on 127.0.0.1) and a team key, side by side per step.

Steps: ``make`` (an array of ``--mb`` MB of normal samples, sorted), ``stats`` (its mean and spread, metrics).
Run 1 computes each step (a miss: the cell runs, its values upload, its record and entry are written); run 2 takes
each from the store's cache (the entry is read, every value downloads and is hash-checked into the step's output
artifact, the record is written). Each figure is the step's time inside its component as its record states it
(from the entry point's start to its record), median of ``--rounds`` pairs of runs, each pair on a fresh bucket.

    python bench/bench_pod_cache.py [--mb 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def one_pair(mb: int, endpoint: str) -> dict[str, tuple[float, float]]:
    """step -> (seconds computing it, seconds taking it from the store's cache)."""
    from helpers.kfp_local import run_on_kfp_local
    from helpers.plans import step
    from helpers.s3 import new_store
    from nbmagic.pipeline.model import PipelinePlan
    from nbmagic.store.lineage import executions
    from nbmagic.store.runs import RunStore

    store = new_store(prefix=f"bench-{uuid.uuid4().hex[:6]}", endpoint=endpoint)
    os.environ.update(store.env())
    n = mb * (1 << 20) // 8
    plan = PipelinePlan(
        "pod-cache-bench",
        (
            step(
                "make",
                f"import numpy as np\nx = np.sort(np.random.default_rng(0).standard_normal({n}))",
                outputs=("x",),
            ),  # fmt: skip
            step(
                "stats",
                "mean = float(x.mean())\nspread = float(x.std())",
                inputs={"x": "make"},
                outputs=("mean", "spread"),
                metrics=("mean", "spread"),
                index=2,
            ),  # fmt: skip
        ),
        {},
        ("mean", "spread"),
    )
    with tempfile.TemporaryDirectory() as folder:
        _, done = run_on_kfp_local(plan, Path(folder), [{}, {}])
        assert all("taken from the store's cache" in done[1].logs[s] for s in ("make", "stats")), done[1].logs
        reader = RunStore(Path(folder) / "reader" / "store")
        first, second = sorted(reader.list_runs(), key=lambda r: r.started)
        took = {
            run.id: {ex.step: ex.ended - ex.started for ex in executions(reader, run.id)} for run in (first, second)
        }
    return {name: (took[first.id][name], took[second.id][name]) for name in ("make", "stats")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from helpers.s3 import moto_process

    endpoint, server = moto_process()
    try:
        pairs = [one_pair(args.mb, endpoint) for _ in range(args.rounds)]
    finally:
        server.terminate()
    print(f"| step ({args.mb} MB array) | computed (miss) | from the store's cache (hit) | hit / miss |")
    print("|---|---|---|---|")
    for name in ("make", "stats"):
        miss = statistics.median(p[name][0] for p in pairs)
        hit = statistics.median(p[name][1] for p in pairs)
        print(f"| {name} | {miss:.2f} s | {hit:.2f} s | {hit / miss:.2f} |")


if __name__ == "__main__":
    main()
