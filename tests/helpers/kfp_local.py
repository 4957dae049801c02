"""A compiled nbmagic pipeline run for real on kfp.local's SubprocessRunner (the component code a cluster pod
runs), in a child process: each run's tasks' streamed output, which tests serve as the tasks' pod logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbmagic.compile.kfp import compile_pipeline
from nbmagic.pipeline.model import PipelinePlan

_CHILD = textwrap.dedent("""
    import json, sys
    from kfp import components, local
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2], raise_on_error=True)
    pipeline = components.load_component_from_file(sys.argv[1])
    for arguments in json.loads(sys.argv[3]):
        print("KFP-LOCAL-RUN", flush=True)
        task = pipeline(**arguments)
        if sys.argv[4]:
            print("KFP-LOCAL-METRICS " + json.dumps(dict(task.outputs[sys.argv[4]].metadata)), flush=True)
""")
_TASK = re.compile(r"Executing task '([^']+)'\n.*?Streamed logs:\n(.*?)\n[^\n]*Task '\1' finished", re.S)


@dataclass
class LocalRun:
    """One run: task -> its container's stdout and stderr; the metrics artifact asked for; kfp.local's console."""

    logs: dict[str, str]
    metrics: dict[str, Any] | None
    console: str


def run_on_kfp_local(
    plan: PipelinePlan, folder: Path, runs: list[dict[str, Any]], metrics: str = ""
) -> tuple[Path, list[LocalRun]]:
    """Compile ``plan`` into ``folder`` and run it once per argument set; ``metrics`` names a Metrics output
    (``STEP_metrics``) whose recorded values each run returns."""
    path = folder / f"{plan.name}.yaml"
    compile_pipeline(plan, output=path)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(folder / "root"), json.dumps(runs), metrics],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    console = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    found = []
    for chunk in console.split("KFP-LOCAL-RUN\n")[1:]:
        logs = {m.group(1): textwrap.dedent(m.group(2)).strip("\n") + "\n" for m in _TASK.finditer(chunk)}
        recorded = chunk.split("KFP-LOCAL-METRICS ", 1)[1].splitlines()[0] if metrics else None
        found.append(LocalRun(logs, json.loads(recorded) if recorded else None, chunk))
    assert len(found) == len(runs), console[-2000:]
    return path, found
