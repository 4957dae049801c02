"""The component entry point: what each compiled KFP component calls to run its notebook step.

A component imports it as ``from nbmagic.runtime.component import nbmagic_run``: from the cluster image, which
has nbmagic installed, or from the zipped runtime package the pipeline carries (see ``compile.bundle``), so a
plain ``python`` image needs no nbmagic install.
"""

from __future__ import annotations

from typing import Any

METRIC_LINE_PREFIX = "nbmagic-metric "
"""What starts each metric line :func:`nbmagic_run` prints (``nbmagic-metric {"step": ..., "name": ..., "value": ...}``)."""


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
    files: dict | None = None,
    store: dict | None = None,
) -> None:
    """Run one notebook step: load input artifacts, run the cell, save output artifacts, log metrics.

    ``files``: the step's ``--inputs`` files and their content hashes when the pipeline was compiled; the step
    stops when one is missing here or changed (a cached result keyed by the old content would be wrong).
    ``store`` (``{"uri", "run", "pipeline", "steps", "dag"}``): the shared run store the step records itself in."""
    import numbers
    import os
    import sys
    import time

    started = time.time()
    if store:  # the store's credentials are checked before the cell runs, not found missing after it
        from .publish import credentials_problem

        problem = credentials_problem(store)
        if problem:
            sys.stderr.write(f"nbmagic: step {step!r}: {problem}\n")
            raise SystemExit(1)
    if store:
        from .publish import heartbeat

        stop_heartbeat = heartbeat(store)

    def record(state, values, error=None, result=None):
        if not store:
            return
        import tempfile

        stop_heartbeat()

        from .publish import publish_step

        saved = {name: artifact.path for name, artifact in outputs.items()} if state == "done" else {}
        try:
            for name in values if result is not None else ():  # metrics that are no artifact: stored too
                if name not in saved:
                    saved[name] = tempfile.mkdtemp(prefix=f"nbmagic-{name}-")
                    marshal.save(result[name], saved[name], name)
            from .store_secrets import hold_back

            loaded = {name: artifact.path for name, artifact in inputs.items()}
            saved, loaded, not_kept = hold_back(step, store, saved, loaded)  # values holding a secret stay out
            publish_step(store, step, state, dict(parameters), loaded, saved, values, started, error, not_kept=not_kept)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is this step's failure
            sys.stderr.write(f"nbmagic: step {step!r}: cannot record the step in {store['uri']}: {exc}\n")
            raise SystemExit(1) from None

    from . import marshal
    from . import step as runtime

    def fail(message):
        sys.stderr.write(f"nbmagic: step {step!r}: {message}\n")
        sys.stderr.flush()
        record("failed", {}, message)
        raise SystemExit(1)

    if files:
        from .files import check_files

        problem = check_files(files)
        if problem:
            fail(problem)
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
    record("done", logged, result=result)
    for name, value in logged.items():
        metrics.log_metric(name, value)
    # One JSON line per metric on stdout (= the pod log on a cluster): the KFP REST API returns no metric
    # values, the Kubernetes pod log API does. Printed last, so they follow anything the cell printed.
    import json

    for name, value in logged.items():
        print(METRIC_LINE_PREFIX + json.dumps({"step": step, "name": name, "value": value}), flush=True)
