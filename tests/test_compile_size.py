"""`nbmagic compile` reports the YAML's size, warns near a cluster's object limit, and --image ships no runtime."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from nbmagic.compile.size import OBJECT_LIMIT, WARN_AT, WORKFLOW_WARN_AT, size_warning

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def nbmagic(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbmagic.cli", *args], capture_output=True, text=True, timeout=300)


def notebook(path: Path, cells: list[str]) -> Path:
    nb = {
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": c, "outputs": [], "execution_count": None}
            for i, c in enumerate(cells)
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb))
    return path


def test_the_warning_names_the_size_the_steps_and_the_fix():
    assert size_warning(WARN_AT - 1, 300) is None
    line = size_warning(1_300_000, 412, "big.yaml")
    assert line is not None and "\n" not in line
    assert "big.yaml is 1.3 MB for 412 steps" in line and "--image" in line
    assert f"~{OBJECT_LIMIT / 1e6:.1f} MB" in line
    # a small YAML whose run grows a large Workflow: KFP keeps every step's inputs and pod spec in it
    assert size_warning(300_000, 30, "p.yaml", workflow=WORKFLOW_WARN_AT - 1) is None
    line = size_warning(300_000, 60, "p.yaml", workflow=1_400_000)
    assert (
        line is not None and "a run of p.yaml (60 steps)" in line and "to ~1.4 MB even with its status gzipped" in line
    )
    assert "--image" in line and "\n" not in line


def test_compile_prints_the_size_and_warns_when_a_cluster_may_refuse_the_pipeline(tmp_path):
    filler = "rows = " + repr(["x" * 60] * 4000) + "\n"  # ~260 KB of cell code per step
    cells = ["%%step s0\n" + filler + "n0 = len(rows)"]
    cells += [f"%%step s{i}\n{filler}n{i} = n{i - 1} + len(rows)" for i in range(1, 5)]
    nb = notebook(tmp_path / "big.ipynb", cells)
    result = nbmagic("compile", str(nb), "-o", str(tmp_path / "big.yaml"))
    assert result.returncode == 0, result.stderr
    size = (tmp_path / "big.yaml").stat().st_size
    assert size > WARN_AT
    assert f"({size / 1e6:.1f} MB, 5 steps)" in result.stdout
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith(f"warning: big.yaml is {size / 1e6:.1f} MB for 5 steps") and "--image" in warning
    small = nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "q.yaml"))
    assert small.returncode == 0 and small.stderr == "" and "kB, 5 steps)" in small.stdout


def test_compile_with_the_cluster_image_ships_no_runtime(tmp_path):
    result = nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "q.yaml"), "--image", "registry.example/nb:1")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "q.yaml").read_text()
    spec = yaml.safe_load(text)
    assert "nbmagic-runtime-package" not in spec["root"]["dag"]["tasks"]
    containers = [e["container"] for e in spec["deploymentSpec"]["executors"].values()]
    assert {c["image"] for c in containers} == {"registry.example/nb:1"}
    assert all(c["command"] == ["python3", "-m", "nbmagic.runtime.executor"] for c in containers)
    assert "nbmagic_runtime" not in text and "'kfp==" not in text  # no runtime, no kfp install per step
    plain = nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "plain.yaml"))
    assert plain.returncode == 0
    assert len(text) * 2 < (tmp_path / "plain.yaml").stat().st_size


def test_a_long_pipeline_without_the_image_carries_its_runtime_once_and_stays_quiet(tmp_path):
    """The runtime is an artifact written once per run, not a value in every step's inputs: no warning for 45
    steps, while a run whose 8 steps each read a large parameter is warned about (each step's inputs are kept,
    several times, in the run's Workflow)."""
    cells = ["%%step s0\nx0 = 1"] + [f"%%step s{i}\nx{i} = x{i - 1} + 1" for i in range(1, 45)]
    nb = notebook(tmp_path / "long.ipynb", cells)
    result = nbmagic("compile", str(nb), "-o", str(tmp_path / "long.yaml"))
    assert result.returncode == 0, result.stderr
    assert "45 steps)" in result.stdout and result.stderr == ""
    # 48 KB of base64, more than gzip's window (Argo gzips the nodes of a large Workflow): 8 steps reading it
    blob = base64.b64encode(random.Random(0).randbytes(36_000)).decode()
    big = f"%%pipeline_parameters\nblob = {blob!r}\n"
    cells = [big, "%%step s0\nx0 = len(blob)"] + [f"%%step s{i}\nx{i} = x{i - 1} + len(blob)" for i in range(1, 8)]
    nb = notebook(tmp_path / "blob.ipynb", cells)
    result = nbmagic("compile", str(nb), "-o", str(tmp_path / "blob.yaml"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "blob.yaml").stat().st_size < WARN_AT
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("warning: a run of blob.yaml (8 steps) grows the Argo Workflow") and "--image" in warning
