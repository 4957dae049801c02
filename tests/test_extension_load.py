"""`%load_ext nbmagic` stays light: no kfp, kubernetes, kserve, optuna or pandas imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("kfp", "kubernetes", "kserve", "optuna", "pandas", "sklearn", "ipywidgets", "nbformat")


def test_loading_imports_nothing_heavy_and_registers_every_magic():
    script = f"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "nbmagic")
lines = sorted(ip.magics_manager.magics["line"])
cells = sorted(ip.magics_manager.magics["cell"])
heavy = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps({{"heavy": heavy, "line": lines, "cell": cells}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert {"step", "pipeline_parameters"} <= set(result["cell"])
    assert {
        "pipeline_metrics",
        "pipeline",
        "pipeline_config",
        "compile_run",
        "katib",
        "serve",
        "restore",
        "runs",
        "lineage",
        "gc",
    } <= set(result["line"])
