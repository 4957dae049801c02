"""What reuse's kernel-state checks cost, beside what a reused cell costs anyway.

The namespace: a 40 MB float array and ``--names`` other values (small lists, dicts, strings, numbers, a small
DataFrame every 50th), as a working notebook holds. Measured (median of ``--rounds``, thread CPU and wall):

- ``names``: the before/after snapshot of the namespace and the classification of a run's bindings (every cell
  that runs with reuse on pays it);
- ``shared``: the walk looking for another value reaching the objects of a name the reused cell may change in
  place (a reuse of a cell that reads a value the kernel holds pays it), the 40 MB array's name being that name;
- ``modules``: the walk inside the values of the local modules a step imports looking for a value that is a part
  of one (a cell storing a value no module holds at its top level pays it, once per store); beside it, what the
  same walk of numpy, pandas, sklearn (and torch, when installed) would cost (not done);
- beside them, the baseline: loading the 40 MB array from the store memory-mapped (what a reuse of it does).

Command: ``python bench/bench_reuse_kernel_checks.py [--names 300] [--rounds 15] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rounds import finish, machine  # noqa: E402


def namespace(names: int) -> dict:
    import numpy as np
    import pandas as pd

    space: dict = {"X": np.random.default_rng(0).random(5_000_000)}  # 40 MB
    for i in range(names):
        kind = i % 5
        space[f"v{i}"] = (
            [i, i + 1, str(i)]
            if kind == 0
            else {"k": i, "rows": [i] * 10}
            if kind == 1
            else f"text {i}"
            if kind == 2
            else i * 1.5
            if kind == 3
            else (pd.DataFrame({"a": range(100), "b": [str(j) for j in range(100)]}) if i % 50 == 4 else (i, "t"))
        )
    return space


def timed(fn, rounds: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(rounds):
        c, w = time.thread_time(), time.perf_counter()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ["NBMAGIC_HOME"] = tempfile.mkdtemp(prefix="bench-kernel-checks-")
    import sklearn.linear_model  # noqa: F401 - its modules' values are walked

    modules = ["numpy", "pandas", "sklearn"]
    try:
        import torch  # noqa: F401

        modules.append("torch")
    except ImportError:
        pass
    from nbmagic.run import reuse_links
    from nbmagic.run.reuse_kernel import bound_by_run, shared_elsewhere, snapshot
    from nbmagic.store.runs import RunStore

    space = namespace(args.names)
    code = "X = X * 1\nif X[0] > 2:\n    y = 1\n"
    store = RunStore()
    ref = store.objects.put(space["X"], "X")

    def names() -> None:
        before = snapshot(space)
        bound_by_run(before, space, code, ("X", "y"), set(), set())

    figures = {
        "names (snapshot + bindings)": timed(names, args.rounds),
        "shared (walk of the other values)": timed(lambda: shared_elsewhere(["X"], space, {"X"}), args.rounds),
        "modules: inside local modules' values (a step importing those packages)": timed(
            lambda: reuse_links._module_contents(reuse_links._local(modules)), args.rounds
        ),
        f"modules: if {', '.join(modules)} were walked too (not done)": timed(
            lambda: reuse_links._module_contents(modules), args.rounds
        ),
        "baseline: load the 40 MB array (mapped)": timed(
            lambda: store.objects.get(ref.hash, "X", mmap=True, mmap_threshold=1 << 20), args.rounds
        ),
    }
    base = figures["baseline: load the 40 MB array (mapped)"][1]
    lines = [
        f"# Reuse's kernel-state checks ({len(space)} names, one a 40 MB array; median of {args.rounds})",
        "",
        "| check | CPU | wall | wall / baseline |",
        "|---|---|---|---|",
        *(f"| {k} | {c * 1000:.2f} ms | {w * 1000:.2f} ms | {w / base:.2f}x |" for k, (c, w) in figures.items()),
        "",
        machine(),
        f"- Load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
    ]
    finish(lines, args.out)


if __name__ == "__main__":
    main()
