"""Single-flight benchmark: 6 trials at parallel 2 over load (2 s) -> process -> train (~0.3 s, reads the tuned
parameter), nbmagic's local tuning with single-flight vs the same runner without it (every trial that finds no
cached result starts its own load), same sampler and seed, a fresh run store each.

    python bench/bench_tune_single_flight.py [--trials 6] [--parallel 2] [--repeat 3] [--out bench/RESULTS-tune-single-flight.md]

Counted: how many times load and process executed (each execution appends a line to a file).
Per-trial overhead: a trial's wall time (around LocalRunner.run) minus the union of its executed steps'
in-worker run time, for the trials after the first wave (their upstream comes from the cache: the steady
state); waiting for a leader is not overhead but shows in the wall time. Before timing, one throw-away
experiment warms up what both variants share (Optuna's import, the step worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = (
    "%%pipeline_parameters\nc = 1.0\n",
    "%%step load\nimport time\nopen({counter!r}, 'a').write('load\\n')\ntime.sleep({load})\ndata = list(range(1000))\n",
    "%%step process\nopen({counter!r}, 'a').write('process\\n')\nfeatures = [x * 2 for x in data]\n",
    "%%step train\nimport time\ntime.sleep({train})\nloss = (c - 3.0) ** 2 + len(features) * 0\n",
    "%pipeline_metrics loss\n",
)


def plan(counter: Path, load: float, train: float):
    from nbmagic.pipeline.cells import RawCell, read_cells
    from nbmagic.pipeline.plan import build_plan

    sources = [c.format(counter=str(counter), load=load, train=train) for c in CELLS]
    return build_plan(read_cells([RawCell(s, i, f"cell {i}") for i, s in enumerate(sources, start=1)]), name="sf")


def union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def one(single_flight: bool, trials: int, parallel: int, seed: int, load: float, train: float) -> dict:
    from nbmagic.run.local import LocalRunner
    from nbmagic.store.runs import RunStore
    from nbmagic.tune.local import LocalExperiment, pipeline_trial_runner
    from nbmagic.tune.space import ExperimentSpec, parse_param

    work = Path(tempfile.mkdtemp(prefix="nbmagic-bench-sf-"))
    counter = work / "executions.txt"
    store = RunStore(work / "store")
    runner = LocalRunner(store, workers=4, single_flight=single_flight)
    spec = ExperimentSpec(
        parameters=(parse_param("c=double(0,6)"),),
        objective="loss",
        goal="minimize",
        algorithm="random",
        seed=seed,
        max_trials=trials,
        parallel_trials=parallel,
    )
    started = time.perf_counter()
    experiment = LocalExperiment(
        spec, pipeline_trial_runner(plan(counter, load, train), runner=runner), pipeline="sf", directory=work / "tune"
    ).start()
    experiment.wait()
    wall = time.perf_counter() - started
    lines = counter.read_text().splitlines()
    overheads = []
    for trial in experiment.trials[parallel:]:  # after the first wave (which waits for, or runs, load)
        run_dir = store.run_dir(trial.run_id)
        spans = [(r["started"], r["ended"]) for r in (json.loads(p.read_text()) for p in run_dir.glob("*.result.json"))]
        overheads.append(trial.duration - union(spans))
    return {
        "wall": wall,
        "load": lines.count("load"),
        "process": lines.count("process"),
        "status": [t.status for t in experiment.trials],
        "cached": [t.cached_steps for t in experiment.trials],
        "best": experiment.best,
        "overheads": overheads,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", type=float, default=2.0)
    parser.add_argument("--train", type=float, default=0.3)
    parser.add_argument("--out")
    parser.add_argument(
        "--json", help="also write the measured figures as JSON here (bench_trial_overhead.py reads it)"
    )
    args = parser.parse_args()
    os.environ.setdefault("NBMAGIC_HOME", tempfile.mkdtemp(prefix="nbmagic-bench-home-"))
    from nbmagic.run.pool import worker_pool

    worker_pool().preload(["json"])  # the warm worker both variants share, started before timing
    one(True, 2, 2, args.seed, 0.0, 0.0)  # warm-up, not reported
    rows = []
    for repeat in range(args.repeat):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        got = {sf: one(sf, args.trials, args.parallel, args.seed, args.load, args.train) for sf in order}
        rows.append((repeat + 1, order, got, os.getloadavg()))
        print(
            f"repeat {repeat + 1}: single-flight {got[True]['wall']:.2f} s (load x{got[True]['load']}), "
            f"without {got[False]['wall']:.2f} s (load x{got[False]['load']})",
            flush=True,
        )
    ours = [r[2][True] for r in rows]
    base = [r[2][False] for r in rows]
    overheads = [o for r in ours for o in r["overheads"]]
    lines = [
        "## Tuning with shared upstream steps (single-flight)",
        "",
        f"Command: `python bench/bench_tune_single_flight.py --repeat {args.repeat}"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"{args.trials} trials, parallel {args.parallel}, random sampler seed {args.seed}; pipeline load "
        f"({args.load:g} s sleep) -> process -> train ({args.train:g} s sleep, reads the tuned parameter); "
        "a fresh run store per variant; the order alternates.",
        "",
        "| repeat (first) | single-flight wall | load / process executed | without wall | load / process executed | ratio | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, order, got, load in rows:
        a, b = got[True], got[False]
        lines.append(
            f"| {number} ({'single-flight' if order[0] else 'without'}) | {a['wall']:.2f} s | {a['load']} / {a['process']} "
            f"| {b['wall']:.2f} s | {b['load']} / {b['process']} | {b['wall'] / a['wall']:.2f}x "
            f"| {' '.join(f'{x:.1f}' for x in load)} |"
        )
    lines += [
        "",
        f"- **Wall, single-flight: median {statistics.median(r['wall'] for r in ours):.2f} s, "
        f"max {max(r['wall'] for r in ours):.2f} s** (target < 5 s); without: median "
        f"{statistics.median(r['wall'] for r in base):.2f} s.",
        f"- **Upstream executions with single-flight: load {sorted({r['load'] for r in ours})}, process "
        f"{sorted({r['process'] for r in ours})}** per experiment (target exactly 1); without: load "
        f"{sorted({r['load'] for r in base})}, process {sorted({r['process'] for r in base})}.",
        f"- Cached steps per trial (single-flight, repeat 1): {ours[0]['cached']}; without: {base[0]['cached']}.",
        f"- Same best trial in both: {all((a['best'].trial, a['best'].objective) == (b['best'].trial, b['best'].objective) for a, b in zip(ours, base))}"
        f" (trial {ours[0]['best'].trial}, loss {ours[0]['best'].objective:.4g}).",
        f"- **Per-trial overhead** (trial wall - its executed steps' in-worker time; trials after the first wave, "
        f"{len(overheads)} trials): **median {statistics.median(overheads) * 1000:.0f} ms**, "
        f"max {max(overheads) * 1000:.0f} ms (target <= 30 ms).",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; shared with other jobs.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "overheads": overheads,
                    "wall": [r["wall"] for r in ours],
                    "wall_without": [r["wall"] for r in base],
                    "load": [r["load"] for r in ours],
                    "process": [r["process"] for r in ours],
                }
            )
        )
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
