"""The library API in a plain Python process: no IPython shell, no magics module, the same results as the magics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"

SCRIPT = r"""
import json, sys
from nbmagic.api import Pipeline, gc, restore, runs

pipeline = Pipeline.from_notebook("quickstart.ipynb")
compiled = pipeline.compile("pipeline.yaml")
first = pipeline.run(["n_estimators=10"])
second = pipeline.run({"n_estimators": 10, "C": 3.0})
table = runs(where="status=done", sort="-started", limit=0)
ns = {}
report = restore("last", "train_svm", ["svm"], namespace=ns)
dry = gc(keep_last=1, dry_run=True)
shell = sys.modules.get("IPython.core.interactiveshell")
print(json.dumps({
    "compiled": str(compiled),
    "first": [first.status, first.metrics["accuracy"] > 0.9],
    "second_cached": sorted(n for n, s in second.steps.items() if s.cached),
    "runs": [r["id"] for r in table.to_records()],
    "ids": [first.id, second.id],
    "restored": [report.run_id, type(ns["svm"]).__name__, ns["svm"].C],
    "gc_drops": [r for r in dry.text().split() if r in (first.id, second.id)],
    "shell": bool(shell and shell.InteractiveShell.initialized()),
    "magics": sorted(m for m in sys.modules if m.startswith("nbmagic.magics") or m == "nbmagic.cli"),
}))
"""


@pytest.mark.slow
def test_pipeline_run_compile_runs_restore_gc_without_ipython(tmp_path):
    shutil.copy(QUICKSTART, tmp_path / "quickstart.ipynb")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NBMAGIC_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    spec = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    assert found["compiled"] == "pipeline.yaml" and "train_forest" in json.dumps(spec["root"]["dag"])
    assert found["first"] == ["done", True]
    assert found["second_cached"] == ["load_data", "process", "train_forest"]  # only C changed
    assert found["runs"] == list(reversed(found["ids"]))
    assert found["restored"] == [found["ids"][1], "SVC", 3.0]
    assert found["gc_drops"] == [found["ids"][0]]
    assert found["shell"] is False and found["magics"] == []


def test_tune_takes_the_same_parameter_texts_as_katib(tmp_path):
    from nbmagic.api import Pipeline, parse_params
    from nbmagic.tune.start import build_spec

    pipeline = Pipeline.from_notebook(QUICKSTART)
    spec = build_spec(pipeline.plan, ["C=double(0.1,10,log)"], fixed=["seed=1"], max_trials=3)
    assert spec.objective == "accuracy" and spec.goal == "maximize" and spec.fixed == {"seed": "1"}
    assert pipeline.values(["C=2.5"])["C"] == 2.5 and pipeline.values({"seed": 3})["seed"] == 3
    with pytest.raises(Exception, match=r"--param 'C': expected NAME=VALUE"):
        parse_params(["C"])
