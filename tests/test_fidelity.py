"""The pipeline computes what the notebook computed: the same notebook top to bottom in a real kernel, then as
a pipeline (%compile_run, nbmagic run, the compiled YAML on kfp.local); every metric and the values compared."""

from __future__ import annotations

import ast

import pytest

from helpers.fidelity import cli, cli_metrics, kernel_parity, text_of

pytestmark = pytest.mark.slow

IMPORTS = """import os, tempfile
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
"""

HELPERS = """BASES = "ACGU"
DATA_DIR = os.path.join(tempfile.gettempdir(), "fidelity-data")
history = []


class Scaler:
    factor = len(BASES)


def add_col(frame):
    frame["c"] = frame["a"] * Scaler.factor


def log(value):
    history.append(value)
"""

CELLS = [
    IMPORTS,
    HELPERS,
    "%%pipeline_parameters\nd1 = 3\nrate = 0.5\n",
    """%%step load
df = pd.DataFrame({"a": np.arange(6)})
test = df.copy()
X = np.arange(12, dtype=float).reshape(-1, 1)
y = X[:, 0] * rate + d1
nested = {"rows": [[1, 2]], "meta": {"n": 1}}
model = LinearRegression()
""",
    """%%step enrich
for dataset in [df, test]:
    dataset["b"] = dataset["a"] * 2
add_col(df)
test.drop(columns=["a"], inplace=True)
alias = nested["rows"]
alias[0].append(3)
width = len(df.columns) + len(BASES)
""",
    "%%step fit\nmodel.fit(X, y)\nlog(len(X))\nprint('fitted on', len(X))\n",
    "%%step fit\ncoef = float(model.coef_[0])\n",
    """%%step report
ncols = len(df.columns)
tcols = len(test.columns)
nrows = len(nested["rows"][0])
logged = len(history)
score = float(model.score(X, y))
""",
    "%pipeline_metrics ncols tcols nrows logged coef d1 width\n",
]
METRICS = ["ncols", "tcols", "nrows", "logged", "coef", "d1", "width"]
NAMES = ["df", "test", "nested", "model", "history", "coef", "width"]


@pytest.mark.parametrize("with_file", [True, False], ids=["notebook-file-and-cell-ids", "no-file-no-cell-ids"])
def test_compile_run_computes_what_the_notebook_computed(tmp_path, monkeypatch, with_file):
    report, nb = kernel_parity(tmp_path, monkeypatch, CELLS, NAMES, METRICS, with_file=with_file)
    assert report["status"] == "done"
    expected = {"ncols": 3, "tcols": 1, "nrows": 3, "logged": 1, "coef": 0.5, "d1": 3, "width": 7}
    assert report["expected_metrics"] == pytest.approx(expected)
    assert report["metrics"] == report["expected_metrics"]
    assert report["same"] == {name: True for name in NAMES}
    everything = "\n".join(text_of(c) for c in nb.cells)
    # nested is changed through an alias no static analysis follows: found at run time, said once
    assert "step 'enrich' changes nested in place; later steps get its version" in everything
    if not with_file:
        assert "this cell is taken as part 2 of step 'fit'" in everything


def test_nbmagic_run_and_kfp_local_give_the_notebooks_metrics(tmp_path, monkeypatch):
    from kfp import components, local

    from helpers.kfp_outputs import metrics_from_outputs
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.cells import read_cells
    from nbmagic.pipeline.notebook import read_notebook
    from nbmagic.pipeline.plan import build_plan

    report, _ = kernel_parity(tmp_path, monkeypatch, CELLS, NAMES, METRICS)
    expected = report["expected_metrics"]

    ran = cli("run", "fidelity.ipynb", "--no-cache", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert cli_metrics(ran.stdout) == pytest.approx(expected)
    assert "[fit] fitted on 12" in ran.stdout  # the step's prints, live, prefixed with its name
    assert f"logs: {tmp_path}" not in ran.stdout and "logs: " in ran.stdout

    path = tmp_path / "fidelity.ipynb"
    plan = build_plan(read_cells(read_notebook(path)), notebook_path=str(path))
    assert "nested" in plan.step("enrich").outputs  # what the runs learned reaches the compiled pipeline
    compile_pipeline(plan, output=tmp_path / "fidelity.yaml")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    task = components.load_component_from_file(str(tmp_path / "fidelity.yaml"))()
    assert metrics_from_outputs(plan, task) == pytest.approx(expected)


READ_FILE = "%%step read_raw --inputs raw.csv\nraw = pd.read_csv('raw.csv')\nn_raw = len(raw)\n"
REUSE_NAMES = [*NAMES, "X", "y", "ncols", "tcols", "nrows", "logged", "score", "raw", "n_raw"]


def test_restart_and_run_all_with_reuse_gives_the_notebooks_values(tmp_path, monkeypatch):
    """Reused cells (in-place changes, helper-cell constants, a step over two cells, an --inputs file) leave the
    kernel with exactly the values the notebook computes without reuse."""
    from helpers.fidelity_reuse import differences, run_all

    monkeypatch.setenv("NBMAGIC_HOME", str(tmp_path / "home"))
    (tmp_path / "raw.csv").write_text("a\n1\n2\n3\n")
    cells = [*CELLS, READ_FILE]
    expected, _ = run_all(tmp_path, monkeypatch, cells, REUSE_NAMES, reuse=False)
    assert (expected["nrows"], expected["logged"], expected["n_raw"]) == (3, 1, 3)

    first, _ = run_all(tmp_path, monkeypatch, cells, REUSE_NAMES, reuse=True)  # runs every cell, stores results
    assert differences(expected, first) == []
    again, printed = run_all(tmp_path, monkeypatch, cells, REUSE_NAMES, reuse=True)  # a restart: reuses
    assert differences(expected, again) == []
    said = dict(zip(["load", "enrich", "fit", "fit2", "report", "read_raw"], [printed[i] for i in (3, 4, 5, 6, 7, 9)]))
    reused = sorted(n for n, text in said.items() if f"{n}: reused from run" in text)
    assert reused == ["enrich", "load", "read_raw", "report"], said
    assert "fit: runs (cannot be reused: the step spans several cells)" in said["fit"]
    # what the kernel stored, the runner takes: load, enrich (after its in-place change was learned) and read_raw
    # (which reports the parameter d1 as a metric)
    status = _compile_run_status(tmp_path, monkeypatch, cells)
    assert {n: status[n] for n in ("load", "enrich", "read_raw")} == dict.fromkeys(
        ("load", "enrich", "read_raw"), "cached"
    )

    (tmp_path / "raw.csv").write_text("a\n1\n2\n3\n4\n")  # a changed --inputs file: that step runs
    changed, printed = run_all(tmp_path, monkeypatch, cells, REUSE_NAMES, reuse=True)
    assert changed["n_raw"] == 4 and "reused" not in printed[9]
    assert differences({n: v for n, v in expected.items() if n not in ("raw", "n_raw")}, changed) == []

    # a helper-cell constant edited: steps whose carried code uses it run again, with its new value
    edited = [cells[0], cells[1].replace('BASES = "ACGU"', 'BASES = "ACGUT"'), *cells[2:]]
    baseline, _ = run_all(tmp_path, monkeypatch, edited, REUSE_NAMES, reuse=False)
    ours, printed = run_all(tmp_path, monkeypatch, edited, REUSE_NAMES, reuse=True)
    assert baseline["width"] == 8 and differences(baseline, ours) == []
    assert "enrich: reused" not in printed[4] and "load: reused from run" in printed[3]


def _compile_run_status(tmp_path, monkeypatch, cells) -> dict:
    """Restart, Run All with reuse, then ``%compile_run``: each step's status in that run."""
    from helpers.fidelity_reuse import run_all

    final = "run = %compile_run --quiet\nprint('STATUS', {n: s.status for n, s in run.steps.items()})"
    _, printed = run_all(tmp_path, monkeypatch, [*cells, final], ["n_raw"], reuse=True)
    line = next(line for line in printed[-1].splitlines() if line.startswith("STATUS "))
    return ast.literal_eval(line[len("STATUS ") :])
