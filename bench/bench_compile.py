"""Compile size and time: today's compiler vs the baseline commit's, side by side in one run.

For notebooks of N trivial data-flow steps (each reads the previous step's value and a pipeline parameter, and calls a
helper function from an ordinary cell), each tree compiles the notebook in a fresh interpreter (its notebook reader,
then ``compile_pipeline``), without the cluster image (plain ``python:3.x`` steps) and with it.
Reported: YAML bytes, bytes per step beyond the step's own code (the slope between the smallest and largest
notebook, minus the cell and helper text each step carries), the first compile in the process (kfp's lazy imports
included) and the best of three warm compiles; ratios are baseline / today. For scale, kfp's own minimum per step:
the same data flow as bare components whose body is ``pass``.

    python bench/bench_compile.py [--steps 5 60 100] [--baseline a389263] [--markdown bench/RESULTS-compile.md]

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
IMAGE = "registry.example/nbmagic:bench"
HELPER = "def inc(v):\n    return v + 1\n"

DRIVER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
notebook, image, with_image = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
from nbmagic.compile import kfp as compiler
try:  # the library API
    from nbmagic.api import Pipeline
    plan = Pipeline.from_notebook(notebook).plan
    defaults = plan.defaults
except ImportError:  # older trees: the command's own notebook reader
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
print(json.dumps({"bytes": len(text.encode()), "first": times[0], "warm": min(times[1:])}))
"""


FLOOR = r"""
import importlib.util, json, sys, tempfile, warnings
from pathlib import Path
from kfp import compiler
warnings.simplefilter("ignore")
n, with_image = int(sys.argv[1]), sys.argv[2] == "1"
lines = ["from kfp import compiler, dsl", "from kfp.dsl import Artifact, Input, Output", ""]
for i in range(n):
    signature = "scale: int" + (f", in_x{i - 1}: Input[Artifact]" if i else "") + f", out_x{i}: Output[Artifact]"
    extra = ", install_kfp_package=False" if with_image else ""
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
    print(json.dumps({"bytes": len((Path(tmp) / "floor.yaml").read_bytes())}))
"""


def kfp_floor(steps: int, with_image: bool) -> int:
    """YAML bytes of the same data flow as bare kfp components whose bodies are ``pass``: kfp's own minimum."""
    out = subprocess.run(
        [sys.executable, "-c", FLOOR, str(steps), "1" if with_image else "0"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["bytes"]


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
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref, "nbmagic"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def measure(tree: Path, nb: Path, with_image: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), NBMAGIC_IMAGE=IMAGE if with_image else "nbmagic:bench-unused")
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(nb), IMAGE, "1" if with_image else "0"],
        env=env,
        cwd=nb.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 60, 100])
    ap.add_argument("--baseline", default="a389263", help="git ref of the compiler to compare with")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    steps = sorted(set(args.steps))
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        work = Path(tmp)
        trees = {"baseline": baseline_tree(args.baseline, work), "today": ROOT}
        floors = {(image, n): kfp_floor(n, image) for image in (False, True) for n in (steps[0], steps[-1])}
        results: dict[tuple, dict] = {}
        own: dict[int, int] = {}
        for n in steps:
            nb = work / f"steps{n}.ipynb"
            own[n] = notebook(nb, n)
            for image in (False, True):
                for label, tree in trees.items():
                    results[(label, image, n)] = r = measure(tree, nb, image)
                    print(
                        f"{label:8} {'image' if image else 'python':6} {n:4} steps: {r['bytes'] / 1e3:9.1f} KB, "
                        f"first {r['first']:.2f} s, warm {r['warm']:.2f} s",
                        flush=True,
                    )
        lo, hi = steps[0], steps[-1]
        header = (
            "| steps | image | baseline KB | today KB | size ratio | baseline first s | today first s | ratio "
            "| baseline warm s | today warm s | ratio |"
        )
        rows += [header, "|" + "---|" * 11]
        for n in steps:
            for image in (False, True):
                b, t = results[("baseline", image, n)], results[("today", image, n)]
                rows.append(
                    f"| {n} | {'nbmagic image' if image else 'python:3.x'} | {b['bytes'] / 1e3:.1f} | "
                    f"{t['bytes'] / 1e3:.1f} | {b['bytes'] / t['bytes']:.1f}x | {b['first']:.2f} | {t['first']:.2f} | "
                    f"{b['first'] / t['first']:.1f}x | {b['warm']:.2f} | {t['warm']:.2f} | {b['warm'] / t['warm']:.1f}x |"
                )
        rows.append("")
        if hi > lo:
            for image in (False, True):
                floor = (floors[(image, hi)] - floors[(image, lo)]) / (hi - lo)
                rows.append(
                    f"- kfp's own minimum, {'nbmagic image' if image else 'python:3.x'} (the same data flow as bare "
                    f"components whose body is `pass`{', no kfp install' if image else ''}): {floor / 1e3:.2f} KB per step"
                )
                for label in trees:
                    slope = (results[(label, image, hi)]["bytes"] - results[(label, image, lo)]["bytes"]) / (hi - lo)
                    rows.append(
                        f"- {label}, {'nbmagic image' if image else 'python:3.x'}: {slope / 1e3:.2f} KB per step, "
                        f"{(slope - own[hi]) / 1e3:.2f} KB beyond the step's own code ({own[hi]} characters)"
                    )
    text = "\n".join(rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(
            f"# bench_compile (python {sys.version.split()[0]}, {os.cpu_count()} cpus, baseline {args.baseline})\n\n"
            + text
            + "\n"
        )


if __name__ == "__main__":
    main()
