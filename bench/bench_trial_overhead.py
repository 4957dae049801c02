"""Per-trial overhead, this tree side by side with a baseline commit, in one run.

    python bench/bench_trial_overhead.py [--baseline REF] [--rounds 4] [--out bench/RESULTS-trial-overhead.md]

The baseline (default: where this branch left main, ``git merge-base HEAD main``) is unpacked with
``git archive`` into a temporary folder; the same measuring script (``bench_tune_single_flight.py``, copied
into both trees) runs there and here, alternately, each round a fresh process and store: 6 trials, parallel 2,
2-s upstream load, ~0.3-s trials. Overhead = a trial's wall time minus its executed steps' in-worker time, for
the trials after the first wave.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from rounds import alternate, finish, machine  # bench/rounds.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_tune_single_flight.py"


def unpack(ref: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="nbmagic-baseline-"))
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    tar = folder / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(folder, filter="data")
    tar.unlink()
    shutil.copy(SCRIPT, folder / "bench" / SCRIPT.name)  # the same measuring code on both sides
    return folder


def measure(tree: Path, repeat: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="nbmagic-overhead-")) / "figures.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NBMAGIC_HOME")}
    env["PYTHONPATH"] = str(tree)
    subprocess.run(
        [sys.executable, str(tree / "bench" / SCRIPT.name), "--repeat", str(repeat), "--json", str(out)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="experiments per side per round")
    parser.add_argument(
        "--busy", type=int, default=0, help="CPU-bound processes kept running meanwhile (a loaded machine)"
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    ref = (
        args.baseline
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    label = subprocess.run(
        ["git", "log", "-1", "--format=%h %s", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    head = subprocess.run(["git", "log", "-1", "--format=%h", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    baseline = unpack(ref)
    sides = {"this tree": ROOT, "baseline": baseline}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        rows = alternate(
            range(1, args.rounds + 1),
            ("this tree", "baseline"),
            lambda _, name: measure(sides[name], args.repeat),
            lambda number, order, got: (
                f"round {number}: "
                + ", ".join(f"{n} {statistics.median(got[n]['overheads']) * 1000:.0f} ms" for n in order)
            ),
        )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        shutil.rmtree(baseline, ignore_errors=True)
    lines = [
        "## Per-trial overhead: this tree vs its baseline, side by side",
        "",
        f"Command: `python bench/bench_trial_overhead.py --rounds {args.rounds} --repeat {args.repeat}"
        + (f" --busy {args.busy}" if args.busy else "")
        + "`"
        + (f" (`--out {args.out}`)" if args.out else ""),
        "",
        f"Baseline: `{label}`; this tree: `{head.stdout.strip()}` plus any uncommitted changes. Each round runs "
        f"`bench_tune_single_flight.py --repeat {args.repeat}` once per side (a fresh process and store; 6 trials, "
        "parallel 2, 2-s load, 0.3-s trials), the order alternating."
        + (f" {args.busy} CPU-bound process(es) ran throughout (a loaded machine)." if args.busy else ""),
        "",
        "| round (first) | this tree: overhead median (max) | baseline: overhead median (max) | this tree: wall | baseline: wall | load average after |",
        "|---|---|---|---|---|---|",
    ]
    for number, order, got, load in rows:
        a, b = got["this tree"], got["baseline"]
        lines.append(
            f"| {number} ({order[0]}) | {statistics.median(a['overheads']) * 1000:.0f} ms ({max(a['overheads']) * 1000:.0f}) "
            f"| {statistics.median(b['overheads']) * 1000:.0f} ms ({max(b['overheads']) * 1000:.0f}) "
            f"| {statistics.median(a['wall']):.2f} s | {statistics.median(b['wall']):.2f} s "
            f"| {' '.join(f'{x:.1f}' for x in load)} |"
        )
    ours = [o for _, _, got, _ in rows for o in got["this tree"]["overheads"]]
    base = [o for _, _, got, _ in rows for o in got["baseline"]["overheads"]]
    lines += [
        "",
        f"- **Per-trial overhead, all rounds ({len(ours)} trials a side): this tree median {statistics.median(ours) * 1000:.0f} ms "
        f"(max {max(ours) * 1000:.0f}), baseline median {statistics.median(base) * 1000:.0f} ms (max {max(base) * 1000:.0f}); "
        f"{statistics.median(base) / statistics.median(ours):.1f}x less** (target <= 30 ms).",
        f"- Upstream executions (this tree): load {sorted({x for r in rows for x in r[2]['this tree']['load']})}, "
        f"process {sorted({x for r in rows for x in r[2]['this tree']['process']})}.",
        machine(),
    ]
    finish(lines, args.out)


if __name__ == "__main__":
    main()
