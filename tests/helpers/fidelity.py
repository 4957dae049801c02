"""Run a notebook top to bottom in a real kernel, then as a pipeline, and compare what each computed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]

_COMPARE = """
import json as _json
import joblib as _joblib

def _same(a, b):
    import numpy as _np
    import pandas as _pd
    if isinstance(a, (_pd.DataFrame, _pd.Series)):
        return isinstance(b, type(a)) and a.equals(b) and list(getattr(a, "columns", [])) == list(getattr(b, "columns", []))
    if isinstance(a, _np.ndarray):
        return isinstance(b, _np.ndarray) and _np.array_equal(a, b)
    if type(a).__eq__ is not object.__eq__:
        try:
            return bool(a == b)
        except Exception:
            pass
    return _joblib.hash(a) == _joblib.hash(b)

_expected = {{n: globals()[n] for n in {names!r}}}
_expected_metrics = {{m: float(globals()[m]) for m in {metrics!r}}}
_run = %compile_run --quiet
_report = {{
    "status": _run.status,
    "metrics": _run.metrics,
    "expected_metrics": _expected_metrics,
    "same": {{n: _same(_expected[n], _run.value(n)) for n in {names!r}}},
}}
open({path!r}, "w").write(_json.dumps(_report))
"""


def text_of(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
        parts.append("\n".join(output.get("traceback", [])))
    return "\n".join(parts)


def write_notebook(path: Path, cells: list, *, cell_ids: bool = True) -> Path:
    """``cells``: sources, or (source, tags) pairs; without cell ids the file is nbformat 4.4 (no ids at all)."""
    made = []
    for cell in cells:
        source, tags = (cell, None) if isinstance(cell, str) else cell
        new = new_code_cell(source)
        if tags:
            new.metadata["tags"] = list(tags)
        made.append(new)
    nb = new_notebook(cells=made)
    if not cell_ids:
        nb.nbformat_minor = 4
        for cell in nb.cells:
            cell.pop("id", None)
    nbformat.write(nb, str(path))
    return path


def execute(path: Path, monkeypatch, *, with_file: bool = True, allow_errors: bool = False):
    """Run the notebook at ``path`` top to bottom in a fresh kernel; the executed notebook."""
    if with_file:
        monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    else:
        monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    )
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return nb


def kernel_parity(
    tmp_path: Path, monkeypatch, cells: list, names: list[str], metrics: list[str], *, with_file: bool = True
) -> tuple[dict, object]:
    """The notebook's cells top to bottom, then ``%compile_run`` in the same kernel: the report and the notebook."""
    report = tmp_path / "parity.json"
    final = _COMPARE.format(names=names, metrics=metrics, path=str(report))
    path = write_notebook(tmp_path / "fidelity.ipynb", ["%load_ext nbmagic", *cells, final], cell_ids=with_file)
    nb = execute(path, monkeypatch, with_file=with_file)
    return json.loads(report.read_text()), nb


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def cli_metrics(output: str) -> dict[str, float]:
    """Metrics from ``nbmagic run``'s summary line (``...; a=1, b=2``)."""
    line = next(line for line in output.splitlines() if " steps cached" in line)
    if "; " not in line:
        return {}
    pairs = line.split("; ", 1)[1].split(", ")
    return {k: float(v) for k, v in (pair.split("=") for pair in pairs)}
