"""Restart and Run All with interactive reuse vs without, on a real ipykernel through nbclient.

    python bench/bench_reuse.py [--size-mb 40]

The notebook: a 3-s load step (``time.sleep(3)`` then a numpy array), a 1-s transform step reading the
pipeline parameter ``factor``, and a cheap summary. Both sides run the same notebook, one without and one with
``%pipeline_config --reuse``, each in fresh kernels with their own store. Timed from the kernel's own
execution timestamps (``shell.execute_reply`` - ``iopub.execute_input``), summed over the three step cells:

1. first Run All (nothing stored yet);
2. restart + Run All, nothing changed (target with reuse: < 0.3 s for the step cells in total; best of
   ``--repeat`` restarts, as the machine is shared);
3. ``factor`` changed, restart + Run All (target: only the transform and the summary run);
4. ``%compile_run`` right after that interactive Run All (target with reuse: < 0.5 s, nothing recomputed).

Every kernel's summary values are compared with the baseline's: the same results with and without reuse.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("load", "transform", "summary")


# the kernel's CPU time per cell (threads included): a measure the other processes on the machine barely move
CPU_HOOK = """import time as _t
_cpu, _stack = {}, []
def _cpu_pre(info):
    _stack.append(_t.process_time())
def _cpu_post(result):
    start = _stack.pop() if _stack else _t.process_time()
    if not _stack:  # the outer cell, not the %%step body run inside it
        _cpu[result.execution_count] = _t.process_time() - start
get_ipython().events.register('pre_run_cell', _cpu_pre)
get_ipython().events.register('post_run_cell', _cpu_post)"""


def cells(reuse: bool, factor: float, size_mb: int) -> list:
    n = size_mb * 1_000_000 // 8
    return [
        new_code_cell("%load_ext nbmagic\n" + CPU_HOOK),
        new_code_cell("%pipeline_config --reuse" if reuse else "# no reuse"),
        new_code_cell(f"%%pipeline_parameters\nfactor = {factor}"),
        new_code_cell(
            "%%step load\nimport time\nimport numpy as np\ntime.sleep(3)\n"
            f"data = np.random.default_rng(0).random({n})\nprint('loaded', data.shape)"
        ),
        new_code_cell("%%step transform\nimport time\ntime.sleep(1)\nscaled = data * factor\nprint('scaled')"),
        new_code_cell(
            "%%step summary\nstats = {'mean': float(scaled.mean()), 'max': float(scaled.max())}\nprint('stats', stats)"
        ),
        new_code_cell("print('RESULT', repr(stats))\nprint('CPU', [_cpu.get(i, 0.0) for i in (4, 5, 6)])"),
        new_code_cell(
            "run = %compile_run --quiet\nprint('STATUS', {n: s.status for n, s in run.steps.items()}, repr(run.value('stats')))"
        ),
        new_code_cell("print('CPU', _cpu.get(8, 0.0))"),
    ]


def seconds(cell) -> float:
    timing = cell.metadata.get("execution", {})
    start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs) + "".join(
        "\n".join(o.get("traceback", [])) for o in cell.outputs
    )


def run_all(folder: Path, reuse: bool, factor: float, size_mb: int, compile_run: bool) -> dict:
    """A fresh kernel runs every cell in order; returns step-cell times, the result, the reuse lines."""
    path = folder / "bench.ipynb"
    nb = new_notebook(cells=cells(reuse, factor, size_mb))
    if not compile_run:
        nb.cells = nb.cells[:-2]
    nbformat.write(nb, path)
    os.environ["JPY_SESSION_NAME"] = str(path)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", record_timing=True, resources={"metadata": {"path": str(folder)}}
    )
    client.execute()
    steps = {name: seconds(nb.cells[3 + i]) for i, name in enumerate(STEPS)}
    result = next(line for line in text(nb.cells[6]).splitlines() if line.startswith("RESULT"))
    cpu = next(line for line in text(nb.cells[6]).splitlines() if line.startswith("CPU"))
    found = {
        "cpu": sum(float(x) for x in cpu[len("CPU [") : -1].split(",")),
        "steps": steps,
        "total": sum(steps.values()),
        "result": result[len("RESULT ") :],
        "reused": [n for i, n in enumerate(STEPS) if f"{n}: reused from run" in text(nb.cells[3 + i])],
    }
    if compile_run:
        found["compile_run"] = seconds(nb.cells[7])
        found["compile_text"] = text(nb.cells[7]).strip()
        found["compile_cpu"] = float(text(nb.cells[8]).split()[1])
    return found


def side(reuse: bool, size_mb: int, repeat: int) -> dict:
    home = tempfile.mkdtemp(prefix="bench-reuse-")
    os.environ["NBMAGIC_HOME"] = home
    folder = Path(home) / "nb"
    folder.mkdir()
    return {
        "first": run_all(folder, reuse, 2.0, size_mb, False),
        "unchanged": min(
            (run_all(folder, reuse, 2.0, size_mb, False) for _ in range(repeat)), key=lambda r: r["total"]
        ),
        "changed": run_all(folder, reuse, 3.0, size_mb, True),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=40, help="size of the loaded array")
    parser.add_argument("--repeat", type=int, default=3, help="restarts with nothing changed; the best is kept")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="leave PYTHONDONTWRITEBYTECODE as it is (every kernel compiles nbmagic's modules from source)",
    )
    args = parser.parse_args()
    if not args.no_bytecode_cache:
        # as an installed package runs: modules load from cached bytecode (kept in a folder of the bench's own)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bench-reuse-pyc-")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load_before = os.getloadavg()[0]
    base = side(False, args.size_mb, args.repeat)
    ours = side(True, args.size_mb, args.repeat)
    load_after = os.getloadavg()[0]
    same = all(base[k]["result"] == ours[k]["result"] for k in base)
    ok = same and ours["changed"]["reused"] == ["load"] and ours["unchanged"]["reused"] == list(STEPS)
    cached = "'load': 'cached', 'transform': 'cached', 'summary': 'cached'" in ours["changed"]["compile_text"]

    def row(label: str, b: float, o: float, target: str) -> str:
        return f"| {label} | {b:.2f} s | {o:.2f} s | {b / o:.0f}x | {target} |"

    cache = "no bytecode cache" if args.no_bytecode_cache else "bytecode cached"
    print(
        f"array {args.size_mb} MB; step cells' time summed (kernel timestamps); {os.cpu_count()} cores;"
        f" {cache}; load average {load_before:.1f} before, {load_after:.1f} after\n"
    )
    print("| scenario | without reuse | with reuse | ratio | target |")
    print("|---|---|---|---|---|")
    print(row("first Run All", base["first"]["total"], ours["first"]["total"], "(stores results)"))
    print(row("restart + Run All, unchanged", base["unchanged"]["total"], ours["unchanged"]["total"], "< 0.3 s"))
    print(
        row(
            "restart + Run All, factor changed",
            base["changed"]["total"],
            ours["changed"]["total"],
            "only transform + summary run",
        )
    )
    print(
        row(
            "%compile_run right after the Run All",
            base["changed"]["compile_run"],
            ours["changed"]["compile_run"],
            "< 0.5 s",
        )
    )
    print()
    print("the same, as the kernel's CPU time for the step cells (less moved by other load on the machine):\n")
    print("| scenario | without reuse | with reuse | target |")
    print("|---|---|---|---|")
    for label, name in (("first Run All", "first"), ("restart + Run All, unchanged", "unchanged")):
        print(f"| {label} | {base[name]['cpu']:.2f} s | {ours[name]['cpu']:.2f} s | |")
    print(f"| restart + Run All, factor changed | {base['changed']['cpu']:.2f} s | {ours['changed']['cpu']:.2f} s | |")
    print(
        f"| %compile_run right after the Run All | {base['changed']['compile_cpu']:.2f} s"
        f" | {ours['changed']['compile_cpu']:.2f} s | |"
    )
    print()
    for name in ("unchanged", "changed"):
        print(f"{name}: per step with reuse {ours[name]['steps']}; reused {ours[name]['reused']}")
    print(f"compile_run after the changed Run All (reuse): {ours['changed']['compile_text']}")
    print(f"same results with and without reuse: {same}; {ours['unchanged']['result']}")
    targets = ours["unchanged"]["total"] < 0.3 and ours["changed"]["compile_run"] < 0.5 and cached and ok and same
    print(f"targets met: {targets}")
    return 0 if targets else 1


if __name__ == "__main__":
    sys.exit(main())
