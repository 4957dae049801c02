"""What runs inside each compiled KFP component, as real code (copied verbatim into the generated pipeline).

``nbmagic_run`` is placed beside the generated step functions and shipped with each component through
``dsl.component(additional_funcs=...)``. It uses only the standard library plus the runtime sources returned by the
generated ``nbmagic_sources()`` (nbmagic's step runtime and marshaller, exec'd into fresh modules), so the
component image needs no nbmagic install.
"""

from __future__ import annotations

import inspect
from typing import Any

METRIC_LINE_PREFIX = "nbmagic-metric "
"""What starts each metric line :func:`nbmagic_run` prints (``nbmagic-metric {"step": ..., "name": ..., "value": ...}``).

The literal is repeated inside ``nbmagic_run`` because only that function's source travels into the component."""


def nbmagic_run(
    step: str,
    label: str,
    code: str,
    prelude: str,
    parameters: dict,
    inputs: dict,
    outputs: dict,
    metric_names: tuple = (),
    metrics: Any = None,
    watch: tuple = (),
) -> None:
    """Run one notebook step: load input artifacts, run the cell, save output artifacts, log metrics."""
    import numbers
    import os
    import sys
    import types

    def fail(message):
        sys.stderr.write(f"nbmagic: step {step!r}: {message}\n")
        sys.stderr.flush()
        raise SystemExit(1)

    def runtime_module(name, source):
        module = types.ModuleType(name)
        module.__file__ = f"<{name}>"
        sys.modules[name] = module
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
        return module

    sources = nbmagic_sources()  # noqa: F821 - defined beside this function in the generated module
    marshal = runtime_module("nbmagic_marshal", sources["marshal"])
    runtime = runtime_module("nbmagic_step", sources["step"])

    values = dict(parameters)
    for name, artifact in inputs.items():
        try:
            values[name] = marshal.load(artifact.path, name)
        except marshal.MarshalError as error:
            fail(f"cannot load input {name!r}: {error}")
    wanted = tuple(outputs) + tuple(m for m in metric_names if m not in outputs)
    # inputs later steps read from elsewhere: a change in place here would not reach them
    before = {name: runtime.fingerprint(values[name]) for name in watch if name in values}
    try:
        # the cell's first line is its %%step line; %time / !cmd lines get an IPython shell of their own
        setup = runtime.ipython_setup if runtime.uses_ipython(code, prelude) else None
        result = runtime.execute(
            step, code, label, values, wanted + tuple(before), prelude=prelude, setup=setup, first_line=2
        )
    except runtime.StepError as error:
        sys.stderr.write(error.notebook_traceback)
        fail(f"{error.exc_type} in {label}")
    for name in runtime.changed(before, result):
        fail(
            f"changes {name} in place, and later steps read {name} from an earlier step; run the pipeline "
            f"locally once (%compile_run) and compile again so they get this version, or end the cell with "
            f"`{name} = {name}`"
        )
    for name in wanted:
        if name not in result:
            fail(f"the cell did not assign {name!r}, which the pipeline needs")
    for name, artifact in outputs.items():
        os.makedirs(artifact.path, exist_ok=True)
        try:
            manifest = marshal.save(result[name], artifact.path, name)
        except marshal.MarshalError as error:
            fail(f"cannot save output {name!r} ({type(result[name]).__name__}): {error}")
        artifact.metadata.update({k: manifest[k] for k in ("type", "format", "size", "hash") if k in manifest})
    logged = {}
    for name in metric_names:
        value = result[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            fail(f"metric {name!r} is {type(value).__name__}, not a number")
        logged[name] = int(value) if isinstance(value, numbers.Integral) else float(value)
    for name, value in logged.items():
        metrics.log_metric(name, value)
    # One JSON line per metric on stdout (= the pod log on a cluster): the KFP REST API returns no metric
    # values, the Kubernetes pod log API does. Printed last, so they follow anything the cell printed.
    import json

    for name, value in logged.items():
        print("nbmagic-metric " + json.dumps({"step": step, "name": name, "value": value}), flush=True)


def source() -> str:
    """The source text of :func:`nbmagic_run`, as it is pasted into generated pipelines."""
    return inspect.getsource(nbmagic_run)
