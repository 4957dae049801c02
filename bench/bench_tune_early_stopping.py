"""Early-stopping benchmark: a synthetic learning-curve experiment with and without ``--early-stopping medianstop``,
same sampler and seed, on nbmagic's local runner.

    python bench/bench_tune_early_stopping.py [--trials 20] [--epochs 20] [--epoch-seconds 0.05] [--algorithm random]
        [--seeds 0 1 2] [--out bench/RESULTS-tune-early-stopping.md]

Each trial is one pipeline step that trains for a fixed number of epochs (each a short sleep) and calls
``nbmagic.report(loss=..., step=epoch)`` every epoch; the loss decays towards a floor at a rate, both set by the
parameters: ``loss(e) = floor + 2 * exp(-rate * e)`` with ``floor = (log10(lr) + 2)^2 / 4 + 0.05 * |momentum - 0.9|``
and ``rate = 0.1 + lr ** 0.5``. Counted: epochs executed (a line per epoch, written by the step), wall time, and
the best trial (number, parameters, final loss) of each variant.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rounds import alternate, finish, machine  # bench/rounds.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CELLS = (
    "%%pipeline_parameters\nlr = 0.01\nmomentum = 0.9\n",
    "%%step train\nimport math, time\nfrom nbmagic import report\n"
    "floor = (math.log10(lr) + 2) ** 2 / 4 + 0.05 * abs(momentum - 0.9)\n"
    "rate = 0.1 + lr ** 0.5\n"
    "for epoch in range({epochs}):\n"
    "    time.sleep({seconds})\n"
    "    open({counter!r}, 'a').write('epoch\\n')\n"
    "    loss = floor + 2 * math.exp(-rate * epoch)\n"
    "    report(loss=loss, step=epoch)\n",
    "%pipeline_metrics loss\n",
)


def plan(counter: Path, epochs: int, seconds: float):
    from nbmagic.pipeline.cells import RawCell, read_cells
    from nbmagic.pipeline.plan import build_plan

    sources = [c.format(counter=str(counter), epochs=epochs, seconds=seconds) for c in CELLS]
    return build_plan(read_cells([RawCell(s, i, f"cell {i}") for i, s in enumerate(sources, start=1)]), name="curves")


def one(early: bool, args: argparse.Namespace, seed: int) -> dict:
    from nbmagic.run.local import LocalRunner
    from nbmagic.store.runs import RunStore
    from nbmagic.tune.local import LocalExperiment, pipeline_trial_runner
    from nbmagic.tune.space import ExperimentSpec, parse_param

    work = Path(tempfile.mkdtemp(prefix="nbmagic-bench-es-"))
    counter = work / "epochs.txt"
    spec = ExperimentSpec(
        parameters=(parse_param("lr=double(1e-4,1,log)"), parse_param("momentum=double(0.5,0.99)")),
        objective="loss",
        goal="minimize",
        algorithm=args.algorithm,
        seed=seed,
        max_trials=args.trials,
        parallel_trials=1,
        early_stopping="medianstop" if early else None,
        min_trials=args.min_trials,
        start_step=args.start_step,
    )
    runner = LocalRunner(RunStore(work / "store"), workers=2)
    started = time.perf_counter()
    experiment = LocalExperiment(
        spec,
        pipeline_trial_runner(plan(counter, args.epochs, args.epoch_seconds), runner=runner),
        pipeline="curves",
        directory=work / "tune",
    ).start()
    experiment.wait()
    best = experiment.best
    return {
        "wall": time.perf_counter() - started,
        "epochs": counter.read_text().count("epoch\n"),
        "pruned": sum(t.status == "pruned" for t in experiment.trials),
        "status": experiment.status,
        "best": (best.trial, best.parameters, best.objective),
        "params": [t.parameters for t in experiment.trials],
    }


def _round_line(seed: int, order: tuple[bool, ...], got: dict[bool, dict]) -> str:
    a, b = got[True], got[False]
    return (
        f"seed {seed}: early stopping {a['epochs']} epochs ({a['pruned']} pruned) {a['wall']:.1f} s, best {a['best'][0]}; "
        f"without {b['epochs']} epochs {b['wall']:.1f} s, best {b['best'][0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epoch-seconds", type=float, default=0.05)
    parser.add_argument("--algorithm", default="random")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-trials", type=int, default=3)
    parser.add_argument("--start-step", type=int, default=4)
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("NBMAGIC_HOME", tempfile.mkdtemp(prefix="nbmagic-bench-home-"))
    rows = alternate(args.seeds, (True, False), lambda seed, early: one(early, args, seed), _round_line)
    lines = [
        "## Early stopping (`--early-stopping medianstop`)",
        "",
        f"Command: `python bench/bench_tune_early_stopping.py --seeds {' '.join(map(str, args.seeds))}"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        f"Synthetic learning curves (see the script), {args.trials} trials of {args.epochs} epochs "
        f"({args.epoch_seconds:g} s each), one trial at a time, sampler `{args.algorithm}`, the same seed for both "
        f"variants; medianstop with min_trials_required={args.min_trials}, start_step={args.start_step}. "
        "Epochs are counted by the step itself.",
        "",
        "| seed (first) | epochs with early stopping | pruned trials | epochs without | fewer epochs | wall with | wall without | same best trial | load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    savings, same = [], []
    for seed, order, got, load in rows:
        a, b = got[True], got[False]
        saving = 1 - a["epochs"] / b["epochs"]
        savings.append(saving)
        same.append(a["best"] == b["best"])
        lines.append(
            f"| {seed} ({'early stopping' if order[0] else 'without'}) | {a['epochs']} | {a['pruned']} | {b['epochs']} "
            f"| {saving:.0%} | {a['wall']:.1f} s | {b['wall']:.1f} s | "
            f"{'yes' if a['best'] == b['best'] else 'NO'}: trial {a['best'][0]} loss {a['best'][2]:.4g}"
            + ("" if a["best"] == b["best"] else f" vs trial {b['best'][0]} loss {b['best'][2]:.4g}")
            + f" | {' '.join(f'{x:.1f}' for x in load)} |"
        )
    lines += [
        "",
        f"- **Fewer epochs with early stopping: median {statistics.median(savings):.0%}, lowest {min(savings):.0%}** "
        "(target >= 40%).",
        f"- **Same best trial (number, parameters, final loss) found by both: {sum(same)} of {len(same)} seeds.**",
        f"- Same parameters suggested in the same order by both: "
        f"{all(r[2][True]['params'] == r[2][False]['params'] for r in rows)}.",
        machine(),
    ]
    finish(lines, args.out)


if __name__ == "__main__":
    main()
