"""The command of a step in nbmagic's cluster image: ``python3 -m nbmagic.runtime.executor INPUT STEP CODE PRELUDE``.

A step whose image has nbmagic installed compiles to a container component that runs this module, so its YAML
carries the step's data, not a program: INPUT is KFP's executor input (the ``{{$}}`` placeholder, filled in by KFP's
driver), STEP the step's interface as JSON (name, cell label, which component input or output holds which
variable or parameter and its type, metrics, ``--inputs`` file hashes, requirements to install), CODE and PRELUDE the cell and what it
needs from ordinary cells, as plain text. KFP's own executor (``kfp.dsl.executor``, which the image has with
nbmagic) turns the executor input into arguments and writes the executor output, as for a Python component.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from typing import Any, Callable

COMMAND = ["python3", "-m", "nbmagic.runtime.executor"]
TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def install(packages: list[str]) -> None:
    """pip-install the step's requirements the image lacks (what a Python component's command does first)."""
    if not packages:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location", *packages]
    done = subprocess.run(command, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    if done.returncode:
        sys.stderr.write(f"nbmagic: could not install {' '.join(packages)} (pip exited with {done.returncode})\n")
        raise SystemExit(1)


def step_function(spec: dict, code: str, prelude: str) -> Callable[..., None]:
    """A function with the component's signature (so KFP's executor can call it) that runs the step."""
    from kfp.dsl import Artifact, Input, Metrics, Output

    from .component import nbmagic_run

    parameters: dict[str, list[str]] = spec.get("parameters", {})  # parameter -> [component input, type]
    inputs: dict[str, str] = spec.get("inputs", {})  # variable -> component input
    outputs: dict[str, str] = spec.get("outputs", {})  # variable -> component output
    metrics: str | None = spec.get("metrics")  # the Metrics output, when the step logs metrics
    annotations: dict[str, Any] = {arg: TYPES[kind] for arg, kind in parameters.values()}
    annotations.update({arg: Input[Artifact] for arg in inputs.values()})
    annotations.update({arg: Output[Artifact] for arg in outputs.values()})
    if metrics:
        annotations[metrics] = Output[Metrics]
    store: dict | None = spec.get("store")  # the shared run store the step records itself in
    if store:
        annotations[spec["store_run"]] = str  # KFP's run id

    def run(**arguments: Any) -> None:
        nbmagic_run(
            step=spec["step"],
            label=spec["label"],
            code=code,
            prelude=prelude,
            parameters={name: arguments[arg] for name, (arg, _) in parameters.items()},
            inputs={var: arguments[arg] for var, arg in inputs.items()},
            outputs={var: arguments[arg] for var, arg in outputs.items()},
            metric_names=tuple(spec.get("metric_names", ())),
            metrics=arguments.get(metrics) if metrics else None,
            watch=tuple(spec.get("watch", ())),
            files=spec.get("files"),
            store={**store, "run": arguments[spec["store_run"]]} if store else None,
        )

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    run.__signature__ = inspect.Signature([inspect.Parameter(a, kind, annotation=t) for a, t in annotations.items()])
    run.__annotations__ = annotations
    return run


def main(argv: list[str] | None = None) -> None:
    """Run the step described by the command line (see the module's docstring)."""
    executor_input, spec_text, code, prelude = sys.argv[1:] if argv is None else argv
    spec = json.loads(spec_text)
    install(spec.get("packages", []))
    from kfp.dsl.executor import Executor

    Executor(
        executor_input=json.loads(executor_input), function_to_execute=step_function(spec, code, prelude)
    ).execute()


if __name__ == "__main__":
    main()
