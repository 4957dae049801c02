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
    ``store`` (``{"uri", "run", "pipeline", "steps", "dag", "cache", "env"}``): the shared run store the step
    records itself in; with ``"cache"`` on and a team key, the step is taken from the store's cache when an entry
    for its key is there (:mod:`.podcache`), and otherwise writes one once its record is published."""
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
    beating = {}
    if store:
        from .publish import heartbeat

        beating["stop"] = heartbeat(store)

    def stop_heartbeat():
        beating.pop("stop", lambda: None)()

    saved: dict = {}  # the step's stored values: name -> marshal folder
    inputs_in_memory: dict = {}  # the loaded inputs, searched for secrets with their files

    def record(state, values, error=None, result=None):
        if not store:
            return
        import shutil
        import tempfile

        stop_heartbeat()

        from .publish import publish_step

        saved.update({name: artifact.path for name, artifact in outputs.items()} if state == "done" else {})
        try:
            for name in values if result is not None else ():  # metrics that are no artifact: stored too
                if name not in saved:
                    saved[name] = tempfile.mkdtemp(prefix=f"nbmagic-{name}-")
                    marshal.save(result[name], saved[name], name)
            from .store_secrets import hold_back

            loaded = {name: artifact.path for name, artifact in inputs.items()}
            memory = (result or {}, {n: v for n, v in inputs_in_memory.items() if n in loaded})  # searched too
            kept, loaded, not_kept = hold_back(step, store, dict(saved), loaded, *memory)  # secrets stay out
            if not_kept:  # never named by a cache entry either
                for name in not_kept:
                    saved.pop(name, None)
            needed = [name for name in not_kept if name in outputs]
            if state == "done" and needed:  # as the local runner: a later step reads it, so the step fails
                error = (
                    f"variable {needed[0]!r} holds a secret and is not passed to the steps that read it"
                    " (read the secret in the step that uses it)"
                )
                for artifact in outputs.values():
                    shutil.rmtree(artifact.path, ignore_errors=True)
                sys.stderr.write(f"nbmagic: step {step!r}: {error}\n")
                publish_step(store, step, "failed", dict(parameters), loaded, {}, {}, started, error)
                raise SystemExit(1)
            publish_step(store, step, state, dict(parameters), loaded, kept, values, started, error, not_kept=not_kept)
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
    from .store_secrets import MARK

    for name, artifact in inputs.items():  # held back by an earlier --secret step (a pipeline compiled before it
        if os.path.exists(os.path.join(artifact.path, MARK)):  # failed there): as the local runner, not passed on
            fail(
                f"input {name!r} holds a secret and is not passed to the steps that read it (read the secret in "
                "the step that uses it)"
            )
    # the store's cache is asked before the inputs load: the key needs only their manifests' hashes
    cache = _store_cache(store, step, code, prelude, parameters, inputs, outputs, metric_names, files, watch)
    if cache is not None and cache.hit is not None:
        if _take_hit(store, step, cache, outputs, metric_names, started, parameters, inputs, metrics, stop_heartbeat):
            return
        from .publish import heartbeat

        beating["stop"] = heartbeat(store)  # the step runs after all
    values = dict(parameters)
    for name, artifact in inputs.items():
        try:
            values[name] = marshal.load(artifact.path, name)
        except marshal.MarshalError as error:
            fail(f"cannot load input {name!r}: {error}")
    inputs_in_memory.update(values)
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
    if cache is not None:
        cache.remember(store, step, saved, logged)
    _log_metrics(step, logged, metrics)


def _log_metrics(step: str, logged: dict, metrics: Any) -> None:
    """The step's metrics into its KFP Metrics artifact, and one JSON line per metric on stdout (= the pod log on a
    cluster): the KFP REST API returns no metric values, the Kubernetes pod log API does. Printed last, so they
    follow anything the cell printed."""
    import json

    for name, value in logged.items():
        metrics.log_metric(name, value)
    for name, value in logged.items():
        print(METRIC_LINE_PREFIX + json.dumps({"step": step, "name": name, "value": value}), flush=True)


class _StoreCache:
    """The step's key in the store's cache, what a lookup found, and whether the entry is to be written."""

    def __init__(self, key: str, backend: Any) -> None:
        self.key, self.backend = key, backend
        self.hit: Any = None
        self.replace = False  # the entry found could not be used: the new one replaces it
        self.lease: Any = None  # the writer lease held from the lookup through a hit's record (no gc between)

    def release(self) -> None:
        if self.lease is not None:
            self.lease, lease = None, self.lease
            lease.close()

    def remember(self, store: dict, step: str, saved: dict, logged: dict) -> None:
        """After the step's record: its entry (only if absent); a failure is one line, never the step's."""
        import sys

        from .podcache import write_entry
        from .publish import value_ref

        try:
            refs = {name: value_ref(folder) for name, folder in saved.items()}
            write_entry(self.backend, self.key, store["run"], step, refs, logged, replace=self.replace)
        except Exception as exc:  # noqa: BLE001 - the step is done and recorded; only later hits are lost
            sys.stderr.write(f"nbmagic: step {step!r}: its entry in the store's cache is not written: {exc}\n")


def _store_cache(
    store: dict | None,
    step: str,
    code: str,
    prelude: str,
    parameters: dict,
    inputs: dict,
    outputs: dict,
    metric_names: tuple,
    files: dict | None,
    watch: tuple = (),
) -> _StoreCache | None:
    """The step's place in the store's cache, with the entry found for its key (``.hit``); None when the step is
    never taken from it. A lookup that fails says why in one line, and the step runs."""
    import os
    import sys

    if not store or store.get("cache") is not True or not (outputs or metric_names):
        return None
    from . import podcache

    if podcache.team_key() is None:
        sys.stderr.write(
            f"nbmagic: step {step!r}: the store's cache is off: no team key ($NBMAGIC_STORE_KEY) is set here\n"
        )
        return None
    try:
        from .publish import _backend

        env = {name: os.environ.get(name) for name in store.get("env") or ()}
        hashes = podcache.input_hashes({name: artifact.path for name, artifact in inputs.items()})
        key = podcache.pod_key(
            code, prelude, parameters, hashes, files, list(outputs), list(metric_names), env,
            environment=podcache.environment_tag(store.get("image")), watch=list(watch),
        )  # fmt: skip
        cache = _StoreCache(key, _backend(store["uri"]))
    except Exception as exc:  # noqa: BLE001 - no cache: the step runs as without one
        sys.stderr.write(f"nbmagic: step {step!r}: not looked up in the store's cache: {exc}\n")
        return None
    try:
        import contextlib

        from .publish import writer_lease

        cache.lease = contextlib.ExitStack()  # a gc waits from the lookup until the hit's record names the values
        cache.lease.enter_context(writer_lease(cache.backend, store["uri"]))
        cache.hit = podcache.lookup(cache.backend, key, set(outputs) | set(metric_names), set(metric_names))
    except podcache.Miss as why:
        cache.replace = True
        sys.stderr.write(f"nbmagic: step {step!r}: not taken from the store's cache: {why}; the step runs\n")
    except Exception as exc:  # noqa: BLE001 - a network or disk failure: the step runs
        sys.stderr.write(f"nbmagic: step {step!r}: not taken from the store's cache: {exc}; the step runs\n")
    finally:
        if cache.hit is None:
            cache.release()
    return cache


def _take_hit(
    store: dict,
    step: str,
    cache: _StoreCache,
    outputs: dict,
    metric_names: tuple,
    started: float,
    parameters: dict,
    inputs: dict,
    metrics: Any,
    stop_heartbeat: Any,
) -> bool:
    """Take the step from the store's cache: its values into the output artifacts, its record (cached, naming the
    run that computed it), its metrics logged and printed. False (one line said why) when that fails: the step
    runs, its outputs rewritten."""
    import sys

    from .podcache import place
    from .publish import publish_step
    from .store_secrets import hold_back

    hit = cache.hit
    logged = {name: hit.metrics[name] for name in metric_names}
    _, loaded, _ = hold_back(step, store, {}, {name: artifact.path for name, artifact in inputs.items()})
    try:
        # the writer lease taken before the lookup is held: no gc removes the values before the record names them
        place(hit, outputs)
        stop_heartbeat()
        publish_step(
            store,
            step,
            "cached",
            dict(parameters),
            loaded,  # inputs an earlier step held back stay out, as in the step's own record
            {},
            logged,
            started,
            stored=hit.refs,
            reused_from={"run": hit.run, "step": hit.step},
        )
    except Exception as exc:  # noqa: BLE001 - the step runs instead
        stop_heartbeat()  # the caller starts a new one for the run
        for artifact in outputs.values():
            import shutil

            shutil.rmtree(artifact.path, ignore_errors=True)
        sys.stderr.write(f"nbmagic: step {step!r}: not taken from the store's cache: {exc}; the step runs\n")
        return False
    finally:
        hit.discard()
        cache.release()
    sys.stderr.write(f"nbmagic: step {step!r}: taken from the store's cache (run {hit.run} on {hit.host})\n")
    sys.stderr.flush()
    if metric_names:
        _log_metrics(step, logged, metrics)
    return True
