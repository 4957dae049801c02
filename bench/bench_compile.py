"""Compile size and time, and the size of the Argo Workflow a cluster makes from the YAML: today's compiler vs
baseline commits', side by side in one run.

For notebooks of N trivial data-flow steps (each reads the previous step's value and a pipeline parameter, and calls a
helper function from an ordinary cell), each tree compiles the notebook in a fresh interpreter (its notebook reader,
then ``compile_pipeline``), without the cluster image (plain ``python:3.x`` steps) and with it.
Reported: YAML bytes, bytes per step beyond the step's own code (the slope between the smallest and largest
notebook, minus the cell and helper text each step carries), the first compile in the process (kfp's lazy imports
included) and the best of three warm compiles; ratios are baseline / today. Every YAML also goes through today's
``nbmagic.compile.workflow.estimate`` (the Workflow as KFP v2's Argo compiler builds it from the IR, and the node
status KFP's driver and Argo add by the run's end): spec and stored bytes.
For scale, KFP's own minimum per step for the same data flow and interface: bare Python components whose body is
``pass``, and container components whose command is ``true`` (the least a task can be in KFP's IR).

    python bench/bench_compile.py [--steps 5 60 100] [--baseline a389263 b652d33] [--markdown FILE]

Targets (issue 16): <= 6 KB/step without the image, <= 1.5 KB/step with it; 100 steps < 1 MB and <= 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from nbmagic.compile.workflow import estimate  # noqa: E402  (today's estimator, for every tree's YAML)

IMAGE = "registry.example/nbmagic:bench"
HELPER = "def inc(v):\n    return v + 1\n"

DRIVER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
notebook, image, with_image, out = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
from nbmagic.compile import kfp as compiler
import os, nbmagic
if os.path.exists(os.path.join(os.path.dirname(nbmagic.__file__), "api.py")):  # the library API
    from nbmagic.api import Pipeline
    plan = Pipeline.from_notebook(notebook).plan
    defaults = plan.defaults
else:  # older trees: the command's own notebook reader (an installed nbmagic must not lend its api.py)
    import nbmagic.cli as cli
    plan, defaults = cli._plan(notebook)
kwargs = {"defaults": defaults}
if with_image:
    kwargs["image"] = image
    if "runtime_image" in compiler.compile_pipeline.__code__.co_varnames:
        kwargs["runtime_image"] = image
times = []
for _ in range(4):
    start = time.perf_counter()
    text = compiler.compile_pipeline(plan, **kwargs)
    times.append(time.perf_counter() - start)
open(out, "w", encoding="utf-8").write(text)
print(json.dumps({"bytes": len(text.encode()), "first": times[0], "warm": min(times[1:])}))
"""


FLOOR = r"""
import importlib.util, json, sys, tempfile, warnings
from pathlib import Path
from kfp import compiler
warnings.simplefilter("ignore")
n, kind = int(sys.argv[1]), sys.argv[2]
lines = ["from kfp import compiler, dsl", "from kfp.dsl import Artifact, Input, Output", ""]
for i in range(n):
    signature = "scale: int" + (f", in_x{i - 1}: Input[Artifact]" if i else "") + f", out_x{i}: Output[Artifact]"
    if kind == "container":
        lines += ["@dsl.container_component", f"def s{i}({signature}):"]
        lines += ["    return dsl.ContainerSpec(image='i', command=['true'])", ""]
        continue
    extra = ", install_kfp_package=False" if kind == "image" else ""
    lines += [f"@dsl.component(base_image='python:3.11'{extra})", f"def s{i}({signature}):", "    pass", ""]
lines += ["@dsl.pipeline(name='floor')", "def pipeline(scale: int = 2):"]
for i in range(n):
    inputs = f", in_x{i - 1}=t{i - 1}.outputs['out_x{i - 1}']" if i else ""
    lines.append(f"    t{i} = s{i}(scale=scale{inputs})")
with tempfile.TemporaryDirectory() as tmp:
    module_path = Path(tmp) / "floor.py"
    module_path.write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location("floor", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compiler.Compiler().compile(module.pipeline, str(Path(tmp) / "floor.yaml"))
    print((Path(tmp) / "floor.yaml").read_text())
"""
FLOORS = {
    "python": "bare Python components whose body is `pass`",
    "image": "the same, `install_kfp_package=False`",
    "container": "container components whose command is `true`",
}


def kfp_floor(steps: int, kind: str) -> str:
    """The YAML of the same data flow as bare KFP components of ``kind`` (see ``FLOORS``): KFP's own minimum."""
    out = subprocess.run([sys.executable, "-c", FLOOR, str(steps), kind], check=True, capture_output=True, text=True)
    return out.stdout


def notebook(path: Path, steps: int) -> int:
    """Write a notebook of ``steps`` steps; returns the characters of cell code and helper each step carries."""
    cells = [
        "%load_ext nbmagic",
        HELPER,
        "%%pipeline_parameters\nscale = 2",
        "%%step s0\nx0 = inc(scale)",
    ]
    for i in range(1, steps):
        cells.append(f"%%step s{i}\nx{i} = inc(x{i - 1}) * scale")
    cells.append(f"%pipeline_metrics x{steps - 1}")
    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None} for c in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return len(f"x{steps // 2} = inc(x{steps // 2 - 1}) * scale") + len(HELPER)


def baseline_tree(ref: str, into: Path) -> Path:
    """The ``nbmagic`` package as it is at ``ref`` (git archive), unpacked under ``into``."""
    into.mkdir(parents=True)
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "nbmagic"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def measure(tree: Path, nb: Path, with_image: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), NBMAGIC_IMAGE=IMAGE if with_image else "nbmagic:bench-unused")
    out_path = nb.with_suffix(".yaml")
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(nb), IMAGE, "1" if with_image else "0", str(out_path)],
        env=env,
        cwd=nb.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["workflow"] = estimate(out_path.read_text(encoding="utf-8"))
    return result


def _kb(n: float) -> str:
    return f"{n / 1e3:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 60, 100])
    ap.add_argument("--baseline", nargs="+", default=["a389263", "b652d33"], help="git refs to compare with")
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args()
    steps = sorted(set(args.steps))
    lo, hi = steps[0], steps[-1]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        work = Path(tmp)
        trees = {ref: baseline_tree(ref, work / ref) for ref in args.baseline}
        trees["today"] = ROOT
        floors = {(kind, n): estimate_yaml(kfp_floor(n, kind)) for kind in FLOORS for n in (lo, hi)}
        results: dict[tuple, dict] = {}
        own: dict[int, int] = {}
        for n in steps:
            own[n] = notebook(work / f"steps{n}.ipynb", n)
            for image in (False, True):
                for label, tree in trees.items():
                    nb = work / f"steps{n}-{label}-{int(image)}.ipynb"
                    notebook(nb, n)
                    results[(label, image, n)] = r = measure(tree, nb, image)
                    w = r["workflow"]
                    print(
                        f"{label:8} {'image' if image else 'python':6} {n:4} steps: {_kb(r['bytes'])} KB YAML, "
                        f"Workflow {_kb(w.spec)} KB spec / {_kb(w.stored)} KB stored, "
                        f"first {r['first']:.2f} s, warm {r['warm']:.2f} s",
                        flush=True,
                    )
    rows += [
        "| steps | image | compiler | YAML KB | Workflow spec KB | status by the run's end KB (gzipped) "
        "| Workflow stored KB | first compile s | warm compile s |",
        "|" + "---|" * 9,
    ]
    for n in steps:
        for image in (False, True):
            for label in trees:
                r = results[(label, image, n)]
                w = r["workflow"]
                rows.append(
                    f"| {n} | {'nbmagic image' if image else 'python:3.x'} | {label} | {_kb(r['bytes'])} | "
                    f"{_kb(w.spec)} | {_kb(w.status)} ({_kb(w.status_compressed)}) | {_kb(w.stored)} | "
                    f"{r['first']:.2f} | {r['warm']:.2f} |"
                )
    rows.append("")
    if hi > lo:
        rows += [
            "| per step | compiler | YAML KB | beyond the step's own code KB | Workflow spec KB "
            "| status by the run's end KB (gzipped) |"
        ]
        rows.append("|" + "---|" * 6)
        for image in (False, True):
            for label in trees:
                a, b = results[(label, image, lo)], results[(label, image, hi)]
                slope = (b["bytes"] - a["bytes"]) / (hi - lo)
                spec = (b["workflow"].spec - a["workflow"].spec) / (hi - lo)
                status = (b["workflow"].status - a["workflow"].status) / (hi - lo)
                packed = (b["workflow"].status_compressed - a["workflow"].status_compressed) / (hi - lo)
                rows.append(
                    f"| {'nbmagic image' if image else 'python:3.x'} | {label} | {slope / 1e3:.2f} | "
                    f"{(slope - own[hi]) / 1e3:.2f} | {spec / 1e3:.2f} | {status / 1e3:.2f} ({packed / 1e3:.2f}) |"
                )
        for kind, what in FLOORS.items():
            (ya, wa), (yb, wb) = floors[(kind, lo)], floors[(kind, hi)]
            rows.append(
                f"| KFP's minimum: {what} | kfp | {(yb - ya) / (hi - lo) / 1e3:.2f} | | "
                f"{(wb.spec - wa.spec) / (hi - lo) / 1e3:.2f} | {(wb.status - wa.status) / (hi - lo) / 1e3:.2f} "
                f"({(wb.status_compressed - wa.status_compressed) / (hi - lo) / 1e3:.2f}) |"
            )
        rows.append("")
        rows.append(f"Own code per step: {own[hi]} characters (cell and helper). Time ratios at {hi} steps:")
        for image in (False, True):
            t = results[("today", image, hi)]
            for label in args.baseline:
                b = results[(label, image, hi)]
                rows.append(
                    f"- {'nbmagic image' if image else 'python:3.x'}, {label} / today: first "
                    f"{b['first'] / t['first']:.1f}x, warm {b['warm'] / t['warm']:.1f}x"
                )
    text = "\n".join(rows)
    print(text)
    if args.markdown:
        load = os.getloadavg()
        Path(args.markdown).write_text(
            f"# bench_compile (python {sys.version.split()[0]}, {os.cpu_count()} cpus, baselines "
            f"{' '.join(args.baseline)}, load average at the end {load[0]:.1f})\n\n" + text + "\n"
        )


def estimate_yaml(text: str) -> tuple[int, object]:
    """(YAML bytes, Workflow size) of a compiled pipeline's text."""
    return len(text.encode()), estimate(text)


if __name__ == "__main__":
    main()
