"""The `nbmagic` command from a saved notebook, without Jupyter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def nbmagic(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_run_a_saved_notebook_then_rerun_from_the_cache(tmp_path):
    notebook = tmp_path / "quickstart.ipynb"
    shutil.copy(QUICKSTART, notebook)
    first = nbmagic("run", str(notebook), "--param", "n_estimators=20")
    assert first.returncode == 0, first.stderr
    assert "train_forest: done" in first.stdout and "accuracy=0.9" in first.stdout
    second = nbmagic("run", str(notebook), "--param", "n_estimators=20", "--quiet")
    assert second.returncode == 0
    assert "5/5 steps cached" in second.stdout


def test_compile_writes_kfp_ir_yaml_and_readable_dsl(tmp_path):
    result = nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "p.yaml"))
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"C", "n_estimators", "test_size", "seed"}
    assert "nbmagic-runtime-package" in spec["root"]["dag"]["tasks"]  # the runtime the python:3.x image lacks
    assert result.stdout.startswith(f"wrote {tmp_path / 'p.yaml'} (") and "kB, 5 steps)" in result.stdout
    assert spec["root"]["inputDefinitions"]["parameters"]["n_estimators"]["parameterType"] == "NUMBER_INTEGER"
    assert nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "p.py")).returncode == 0
    assert "@dsl.pipeline" in (tmp_path / "p.py").read_text()


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path):
    result = nbmagic("run", str(QUICKSTART), "--param", "n_estimators=many")
    assert result.returncode == 2
    assert result.stderr.strip() == "nbmagic: parameter 'n_estimators' is int; 'many' is not a valid int"
    missing = nbmagic("run", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2 and "no notebook" in missing.stderr


def test_a_relative_store_path_is_relative_to_where_the_command_runs(tmp_path):
    import os

    notebook = tmp_path / "nb" / "quickstart.ipynb"
    notebook.parent.mkdir()
    shutil.copy(QUICKSTART, notebook)
    env = {**os.environ, "NBMAGIC_HOME": "relative-store"}
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "run", str(notebook), "--quiet", "--param", "n_estimators=10"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "relative-store" / "store" / "index.sqlite").exists()
    assert not (notebook.parent / "relative-store").exists()
