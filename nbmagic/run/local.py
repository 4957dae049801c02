"""The local runner: schedule a plan's steps on the warm worker, in parallel, reusing cached results."""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from ..errors import NbMagicError, Stopped
from ..pipeline.model import PipelinePlan, StepPlan
from ..runtime.report import REPORT_FILE
from ..runtime.step import uses_ipython
from ..store.lineage import code_hash
from ..store.runs import RunStore
from . import single_flight
from .cache_key import cache_key, environment  # versions remembered on disk
from .result import Run, StepState
from .task import mask_file, mask_result
from .worker import INTERRUPTED_EXIT

Listener = Callable[[Run, StepState | None], None]


def _installed(module: str) -> bool:
    """A library installed in site-packages (safe to import once in the worker), not a notebook-local module."""
    import importlib.util

    if module in sys.stdlib_module_names:
        return False
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    origin = (spec.origin or "") if spec else ""
    return "site-packages" in origin or "dist-packages" in origin


_PRELOADS: dict[tuple[str, ...], list[str]] = {}  # the steps' sources -> their installed imports


def preload_modules(plan: PipelinePlan) -> list[str]:
    """Installed modules the steps import, by their full names (``sklearn.ensemble``, not just ``sklearn``),
    for the worker to import once before forking; a submodule left out is imported again by every step.
    Found once per set of step sources (every trial of an experiment runs the same code)."""
    sources = tuple(source or "" for step in plan.steps for source in (step.prelude, step.cell.code))
    if sources not in _PRELOADS:
        if len(_PRELOADS) > 64:
            _PRELOADS.clear()
        _PRELOADS[sources] = _imported_and_installed(sources)
    return list(_PRELOADS[sources])


def _imported_and_installed(sources: tuple[str, ...]) -> list[str]:
    import ast

    found: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    installed = {top for top in {name.split(".")[0] for name in found} if _installed(top)}
    return sorted(name for name in found if name.split(".")[0] in installed)


STOP_POLL = 0.1  # seconds between checks of a run's stop event while steps run
KILL_WAIT = 5.0  # seconds to wait for killed steps' exits before the run is recorded as ended


class LocalRunner:
    """Runs plans on this machine. One instance can run several plans at once from different threads."""

    def __init__(self, store: RunStore | None = None, workers: int | None = None, single_flight: bool = True) -> None:
        self.store = store or RunStore()
        if workers is not None and workers < 1:
            raise NbMagicError(f"--workers must be at least 1, not {workers}")
        self.workers = workers or os.cpu_count() or 2
        self.single_flight = single_flight  # a step already running elsewhere with the same key is waited for

    def run(
        self,
        plan: PipelinePlan,
        parameters: dict[str, Any] | None = None,
        *,
        cache: bool = True,
        listener: Listener | None = None,
        experiment: str | None = None,
        workers: int | None = None,
        stop: threading.Event | None = None,
    ) -> Run:
        """Run ``plan`` with parameter overrides; returns when every step has finished, failed or been skipped.

        Setting ``stop`` (from any thread) ends the run: running steps are killed with their process trees,
        the run is recorded ``stopped``.
        """
        from .lazy_pool import LazyPool

        values = plan.resolve_parameters(parameters)
        limit = self.workers if workers is None else workers
        if limit < 1:
            raise NbMagicError(f"--workers must be at least 1, not {limit}")
        names = [s.name for s in plan.steps]
        run_id = self.store.create_run(
            plan.name,
            values,
            names,
            notebook=plan.notebook,
            experiment=experiment,
            upstream={s.name: list(s.upstream) for s in plan.steps},
        )
        run = Run(run_id, plan.name, names, values, self.store)
        run._flights, run._flight_cancel = {}, threading.Event()  # type: ignore[attr-defined]
        # steps another one runs --after: ordering that carries no value, so they act through side effects
        run._followed = {n for s in plan.steps for n in s.explicit_after}  # type: ignore[attr-defined]
        run_dir = self.store.run_dir(run_id)
        notify = listener or (lambda *_: None)
        notify(run, None)
        pool = LazyPool(preload_modules(plan))  # no worker start when every step comes from the cache

        running: dict[Future[dict[str, Any]], tuple[StepPlan, str]] = {}
        retry_at: dict[str, float] = {}
        steps = {s.name: s for s in plan.steps}
        rerun: set[str] = set()  # running steps that read a value another step has since changed in place
        _report_in_place(plan)
        try:
            while True:
                if stop is not None and stop.is_set():
                    raise Stopped("stopped")
                self._skip_after_failures(run, steps, notify)
                for step in [steps[s.name] for s in plan.steps]:
                    state = run.steps[step.name]
                    if len(running) >= limit:
                        break
                    if state.status != "pending" or retry_at.get(step.name, 0) > time.time():
                        continue
                    if not all(run.steps[u].status in ("done", "cached") for u in step.upstream):
                        continue
                    submitted = self._start(run, step, values, cache, run_dir, pool, notify)
                    if submitted is not None:
                        running[submitted[0]] = (step, submitted[1])
                if not running:
                    pending = [s for s in run.steps.values() if s.status == "pending"]
                    if not pending:
                        break
                    if retry_at:
                        delay = max(0.0, min(retry_at.values()) - time.time())
                        if stop is not None:
                            stop.wait(delay)  # a stop during the retry's wait ends the run at once
                        else:
                            time.sleep(delay)
                        continue
                    # anything still pending has no way to start (cannot happen with a valid plan)
                    break
                wait_for = 1.0 if stop is None else STOP_POLL
                if retry_at:
                    wait_for = min(wait_for, max(0.0, min(retry_at.values()) - time.time()))
                finished, _ = wait(list(running), timeout=wait_for, return_when=FIRST_COMPLETED)
                for future in finished:
                    step, spec_path = running.pop(future)
                    event = future.result()
                    if event.get("event") == "flight":  # the same step elsewhere has finished
                        submitted = self._after_flight(run, step, event, values, cache, run_dir, pool, notify)
                        if submitted is not None:
                            running[submitted[0]] = (step, submitted[1])
                        continue
                    retry_at.pop(step.name, None)
                    again = self._finish(run, step, event, spec_path, cache, notify)
                    if again is not None:
                        retry_at[step.name] = again
                    if step.name in rerun:
                        rerun.discard(step.name)
                        self._reset(run, step.name, notify)
                    elif run.steps[step.name].status == "done":
                        moved = json.loads(Path(spec_path).with_name(f"{step.name}.result.json").read_text())
                        if moved.get("changed"):
                            started = follow_in_place(steps, step.name, moved["changed"], moved.get("unsure", ()))
                            for name in started:
                                if run.steps[name].status == "running":
                                    rerun.add(name)
                                elif run.steps[name].status != "pending":
                                    self._reset(run, name, notify)
        except BaseException as exc:  # Ctrl-C, or anything else escaping: stop the steps, never leave a 'running' run
            run._flight_cancel.set()  # type: ignore[attr-defined]
            for future in running:
                pool.kill(getattr(future, "task_id", ""))
            try:
                wait(list(running), timeout=KILL_WAIT)  # the worker reports each killed tree's exit
            except KeyboardInterrupt:  # a second Ctrl-C: record the run now rather than leave it 'running'
                pass
            reason = (
                exc.reason
                if isinstance(exc, Stopped)
                else "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else str(exc)
                if isinstance(exc, NbMagicError)
                else f"no space left on device writing {exc.filename or self.store.root} (free space, then run again)"
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else f"the runner stopped: {type(exc).__name__}: {exc}"
            )
            asked = isinstance(exc, Stopped) and stop is not None and stop.is_set()
            self._abort(run, reason, running, pool, "stopped" if asked else "failed")
            try:
                notify(run, None)
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            if asked:
                return run  # asked for by the caller: the stopped run is the result
            if isinstance(exc, KeyboardInterrupt):
                exc.run = run  # type: ignore[attr-defined] - front ends name the run in their one line
            raise
        finally:
            for name in list(run._flights):  # type: ignore[attr-defined]
                self._release_flight(run, name)  # not finished here (stopped): a waiter runs the step itself
        failed = [s for s in run.steps.values() if s.status in ("failed", "timed_out")]
        pruned = [s for s in run.steps.values() if s.status == "pruned"]
        run.status = "failed" if failed else "pruned" if pruned else "done"
        run.error = failed[0].error if failed else pruned[0].error if pruned else None
        run.ended = time.time()
        self.store.finish_run(run_id, run.status, run.metrics, run.error)
        notify(run, None)
        self._collect_garbage()
        return run

    def _collect_garbage(self) -> None:
        """Apply the store's automatic gc policy, if one is configured; a failure never fails the run."""
        from ..store.gc import auto_gc

        try:
            report = auto_gc(self.store)
            if report is not None and report.over_budget:
                print(report.over_budget, file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - gc is housekeeping
            print(f"nbmagic: automatic gc skipped: {exc}", file=sys.stderr)

    # -- one step ------------------------------------------------------------------------------
    def _start(
        self, run: Run, step: StepPlan, values: dict[str, Any], cache: bool, run_dir: Path, pool: Any, notify: Listener
    ):
        state = run.steps[step.name]
        inputs = {var: run.steps[src].outputs[var]["hash"] for var, src in step.inputs.items()}
        after = {name: run.steps[name].cache_key or "" for name in step.explicit_after}
        key = cache_key(step, values, inputs, after)
        state.cache_key = key
        use_cache = cache and step.settings.cache
        state.started = time.time()
        if use_cache:
            from ..store.shared_cache import Wanted

            # a parameter reported as a metric is no stored value: its number is in the entry's metrics
            needed = set(step.outputs) | (set(step.metrics) & set(step.writes))
            wanted = Wanted(
                step.name,
                frozenset(needed),
                frozenset(step.metrics),
                followed=step.name in getattr(run, "_followed", ()),
            )
            entry = self.store.cache_get(key, wanted=wanted)
            if entry is not None and needed <= set(entry.outputs) and set(step.metrics) <= set(entry.metrics):
                self._release_flight(run, step.name)
                state.status, state.ended = "cached", time.time()
                state.outputs, state.not_kept = entry.outputs, entry.not_kept
                run.metrics.update(entry.metrics)
                self.store.set_step(
                    run.id,
                    step.name,
                    "cached",
                    cached=1,
                    cache_key=key,
                    started=state.started,
                    ended=state.ended,
                    code_hash=code_hash(step.cell.code, step.prelude),
                    properties={
                        "reused_execution": entry.execution_id,
                        "not_kept": entry.not_kept,
                        "parameters": {n: values[n] for n in step.parameters},
                    },
                )
                self.store.record_execution(
                    run.id, step.name, self._input_refs(run, step), entry.outputs, environment=environment(step.modules)
                )
                notify(run, state)
                return None
            if self.single_flight and step.name not in run._flights:  # type: ignore[attr-defined]
                flight = single_flight.try_acquire(self.store.root, key)
                if flight is None:  # the same step with the same key is running: wait for it, take its result
                    state.status = "running"
                    self.store.set_step(run.id, step.name, "running", cache_key=key, started=state.started)
                    notify(run, state)
                    return single_flight.wait_for(self.store.root, key, run._flight_cancel), ""  # type: ignore[attr-defined]
                run._flights[step.name] = flight  # type: ignore[attr-defined]
        state.status = "running"
        state.attempts += 1
        spec = {
            "step": step.name,
            "code": step.cell.code,
            "label": step.cell.label,
            "first_line": 2,  # the cell's first line is the %%step magic
            "prelude": [list(part) for part in step.prelude_parts] or step.prelude,
            "prelude_label": f"notebook code used by step {step.name}",
            "parameters": {name: values[name] for name in step.parameters},
            "inputs": inputs,
            "input_refs": {var: run.steps[src].outputs[var] for var, src in step.inputs.items()},
            "writes": list(step.writes),
            "carried": [name for _, name in step.carried],
            "required": sorted(set(step.outputs) | set(step.metrics)),
            "metrics": list(step.metrics),
            "store": str(self.store.root),
            "log": str(run_dir / f"{step.name}.log"),
            "result": str(run_dir / f"{step.name}.result.json"),
            "env": {
                **dict(getattr(step.settings, "env", ()) or ()),
                REPORT_FILE: str(run_dir / f"{step.name}.reports.jsonl"),  # nbmagic.report() writes here
            },
            "uses_ipython": uses_ipython(step.cell.code, step.prelude),
            # where the step's --secret-file mounts are: their contents (read by the task) are masked, never stored
            "secret_files": [f.path for f in getattr(step.settings, "secret_files", ())],
            "cache_key": key,
            "modules": list(step.modules),  # a value of one of them cannot be reused in a kernel (it loads as a copy)
            # relative paths (--inputs files among them) mean what they mean here, wherever the worker started
            "cwd": os.getcwd(),
        }
        spec_path = run_dir / f"{step.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        result_path = Path(spec["result"])
        if result_path.exists():
            result_path.unlink()
        self.store.set_step(
            run.id,
            step.name,
            "running",
            cache_key=key,
            started=state.started,
            log=spec["log"],
            code_hash=code_hash(step.cell.code, step.prelude),
        )
        notify(run, state)
        timeout = getattr(step.settings, "timeout", None)
        memory = _memory_limit(step)
        # local stand-ins for secrets travel over the worker's pipe, never into files on disk
        from ..pipeline.settings import local_env

        secrets = {k: v for k, v in local_env(step.settings, os.environ).items() if k not in spec["env"]}
        task, future = pool.submit(str(spec_path), timeout=timeout, memory=memory, env=secrets)
        future.task_id = task  # type: ignore[attr-defined]
        return future, str(spec_path)

    def _finish(
        self, run: Run, step: StepPlan, event: dict[str, Any], spec_path: str, cache: bool, notify: Listener
    ) -> float | None:
        """Record a finished step; return when to retry it, or None."""
        state = run.steps[step.name]
        spec = json.loads(Path(spec_path).read_text())
        # the step's secrets are masked here whatever the outcome (a step timed out, killed or crashed never
        # reached the worker's own masking), before its log is capped or read by anyone
        hidden = step_secrets(step)
        if hidden:
            mask_file(spec["log"], hidden)
        _cap_log(spec["log"])
        result_path = Path(spec["result"])
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        if result is not None and hidden:
            mask_result(result, hidden)
        state.ended = time.time()
        if event.get("timed_out"):
            state.status = "timed_out"
            state.error = f"step {step.name!r} timed out after {step.settings.timeout} s and was stopped"
        elif result is None:
            signal_ = event.get("signal")
            state.status = "failed"
            memory = getattr(step.settings, "memory_limit", None) or getattr(step.settings, "memory_request", None)
            if signal_ == 9 and memory:
                state.error = f"step {step.name!r} was stopped: it went over its memory limit {memory}"
            elif event.get("worker_died"):
                state.error = f"step {step.name!r}: the step worker process ended unexpectedly"
            else:
                state.error = _ended_without_result(step.name, event.get("code"), signal_)
        else:
            state.status = result["status"]
            state.error = result.get("error")
            state.traceback = result.get("traceback")
            if state.status == "failed" and "MemoryError" in (state.error or "") and _memory_limit(step):
                state.error = f"step {step.name!r} went over its memory limit {step.settings.memory_limit or step.settings.memory_request}: {state.error}"
            state.outputs = result.get("outputs", {})
            state.not_kept = result.get("not_kept", {})
        retries = getattr(step.settings, "retries", None) or 0
        if state.status in ("failed", "timed_out") and state.attempts <= retries:
            backoff = getattr(step.settings, "retry_backoff", None) or 0
            delay = backoff * (2 ** (state.attempts - 1))
            state.status = "pending"
            notify(run, state)
            return time.time() + delay
        if state.status not in ("done", "pruned"):
            self._release_flight(run, step.name, state.error or state.status)
        elif state.status == "pruned":  # stopped early, nothing to share: a waiter runs the step itself
            self._release_flight(run, step.name)
        if state.status == "done":
            run.metrics.update(result.get("metrics", {}))
            execution = self.store.record_execution(
                run.id, step.name, self._input_refs(run, step), state.outputs, environment=environment(step.modules)
            )
            if cache and step.settings.cache:
                self.store.cache_put(
                    spec["cache_key"],
                    step.name,
                    execution,
                    state.outputs,
                    result.get("metrics", {}),
                    state.not_kept,
                    carried=result.get("carried"),
                )
            self._release_flight(run, step.name)
        self.store.set_step(
            run.id,
            step.name,
            state.status,
            ended=state.ended,
            error=state.error,
            traceback=state.traceback,
            properties={
                "not_kept": state.not_kept,
                "attempts": state.attempts,
                "parameters": spec["parameters"],
                # names only: what a later publish masks in the step's log again
                **({"secret_env": [s.env for s in step.settings.secret_env]} if step.settings.secret_env else {}),
                **({"secret_files": spec["secret_files"]} if spec.get("secret_files") else {}),
            },
        )
        notify(run, state)
        return None

    def _after_flight(
        self,
        run: Run,
        step: StepPlan,
        event: dict[str, Any],
        values: dict[str, Any],
        cache: bool,
        run_dir: Path,
        pool: Any,
        notify: Listener,
    ):
        """The leader of this step's key is done: take its result from the cache, fail as it failed, or run."""
        flight = event.get("flight")
        if flight is None:  # the run was stopped while waiting
            return None
        run._flights[step.name] = flight  # type: ignore[attr-defined]
        failed = event.get("failed")
        if failed is not None:
            self._release_flight(run, step.name)
            state = run.steps[step.name]
            state.status, state.ended = "failed", time.time()
            state.error = f"{failed['error']} (the same step with the same inputs failed in run {failed.get('run')})"
            self.store.set_step(run.id, step.name, "failed", ended=state.ended, error=state.error)
            notify(run, state)
            return None
        return self._start(run, step, values, cache, run_dir, pool, notify)

    def _release_flight(self, run: Run, name: str, error: str | None = None) -> None:
        flight = run._flights.pop(name, None)  # type: ignore[attr-defined]
        if flight is not None:
            flight.release(error, run.id)

    def _reset(self, run: Run, name: str, notify: Listener) -> None:
        """Run a step again: it ran on a value that an in-place change has since replaced."""
        state = run.steps[name]
        state.status, state.error, state.traceback, state.outputs = "pending", None, None, {}
        self.store.set_step(run.id, name, "pending")
        notify(run, state)

    def _input_refs(self, run: Run, step: StepPlan) -> dict[str, dict[str, Any]]:
        return {var: run.steps[src].outputs[var] for var, src in step.inputs.items()}

    def _skip_after_failures(self, run: Run, steps: dict[str, StepPlan], notify: Listener) -> None:
        changed = True
        while changed:
            changed = False
            for name, state in run.steps.items():
                if state.status != "pending":
                    continue
                blocked = [
                    u
                    for u in steps[name].upstream
                    if run.steps[u].status in ("failed", "timed_out", "skipped", "pruned")
                ]
                if blocked:
                    state.status = "skipped"
                    state.error = f"skipped: upstream step {blocked[0]!r} did not finish"
                    self.store.set_step(run.id, name, "skipped", error=state.error)
                    notify(run, state)
                    changed = True

    def _abort(self, run: Run, reason: str, running: dict, pool: Any, status: str = "failed") -> None:
        secret_env: dict[str, dict[str, list[str]]] = {}  # what a later publish masks in their logs again
        for step, spec_path in running.values():  # killed: their logs never reached the worker's masking
            names = {
                "secret_env": [x.env for x in step.settings.secret_env],
                "secret_files": [f.path for f in getattr(step.settings, "secret_files", ())],
            }
            if any(names.values()):
                secret_env[step.name] = {k: v for k, v in names.items() if v}
            hidden = step_secrets(step)
            if hidden and spec_path:
                mask_file(str(Path(spec_path).with_name(f"{step.name}.log")), hidden)
        for state in run.steps.values():
            if state.status in ("pending", "running"):
                state.status = status if state.status == "running" else "skipped"
                state.error = reason
                state.ended = time.time()
                try:
                    extra = {"properties": secret_env[state.name]} if state.name in secret_env else {}
                    self.store.set_step(run.id, state.name, state.status, error=reason, ended=state.ended, **extra)
                except NbMagicError:  # the index cannot be written (disk full): finish_run keeps the outcome
                    pass
        run.status, run.error, run.ended = status, reason, time.time()
        self.store.finish_run(run.id, status, run.metrics, reason)


_SIGNAL_NAMES = {
    4: "illegal instruction",
    6: "aborted",
    7: "bus error",
    8: "floating-point exception",
    11: "segmentation fault",
}


def step_secrets(step: StepPlan) -> tuple[str, ...]:
    """The values a local run injects for the step's ``--secret`` variables (masked wherever the step's text goes)."""
    from ..pipeline.settings import local_env

    env = local_env(step.settings, os.environ)
    found = tuple(dict.fromkeys(env[s.env] for s in step.settings.secret_env if env.get(s.env)))
    files = [f.path for f in getattr(step.settings, "secret_files", ())]
    if files:  # what the step can read at its --secret-file mounts here is as secret
        from ..runtime.secret_files import secret_file_values

        found = tuple(dict.fromkeys((*found, *secret_file_values(files))))
    if found:
        from ..store.shared_logs import remember_secrets

        remember_secrets(found)
    return found


def _ended_without_result(step: str, code: int | None, signal_: int | None) -> str:
    """One line for a step process that ended before writing its result."""
    if code == INTERRUPTED_EXIT:
        return f"step {step!r} was interrupted (KeyboardInterrupt)"
    if signal_ in _SIGNAL_NAMES:
        return f"step {step!r} crashed: {_SIGNAL_NAMES[signal_]} (signal {signal_})"
    if signal_:
        return f"step {step!r} was killed (signal {signal_})"
    return f"step {step!r} ended without a result (exit code {code})"


def _cap_log(log_path: str) -> None:
    """Keep the head and tail of an over-long step log (``$NBMAGIC_LOG_CAP``, default 50 MB), the cut marked."""
    from ..store.logs import cap_log

    try:
        cap_log(log_path)
    except Exception as exc:  # noqa: BLE001 - a bad cap setting must not fail the run
        print(f"nbmagic: step log not capped: {exc}", file=sys.stderr)


def _report_in_place(plan: PipelinePlan) -> None:
    """Say once per step and variable that later steps get a step's in-place changes."""
    from ..pipeline.learned import report_once

    for step in plan.steps:
        for var, line in step.in_place:
            message = report_once(step.name, var, line)
            if message:
                print(message, flush=True)


def follow_in_place(
    steps: dict[str, StepPlan], changer: str, variables: list[str], unsure: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """``changer`` changed ``variables`` in place though its code did not show it: later steps (in notebook order)
    that read them from an earlier step now read them from ``changer`` (``steps`` is updated), and the fact is kept
    for the next compile. Returns the affected steps and every step after them, to run (again) on the new value."""
    from dataclasses import replace

    from ..pipeline.learned import remember, report_once

    source = steps[changer]
    remember(source.cell.code, variables)
    for var in variables:
        message = report_once(changer, var, None, unsure=var in unsure)
        if message:
            print(message, flush=True)
    ancestors: set[str] = set()
    pending = list(source.upstream)
    while pending:
        name = pending.pop()
        if name not in ancestors:
            ancestors.add(name)
            pending.extend(steps[name].upstream)
    position = source.cell.index
    affected: list[str] = []
    for name, step in list(steps.items()):
        if name == changer or name in ancestors or step.cell.index <= position:
            continue
        moved = {
            var: changer
            for var, src in step.inputs.items()
            if var in variables and src != changer and steps[src].cell.index < position
        }
        carried = {name for _, name in step.carried}
        moved.update({var: changer for var in variables if var in carried and var not in step.inputs})
        if moved:
            steps[name] = replace(
                step, inputs={**step.inputs, **moved}, upstream=tuple(dict.fromkeys(step.upstream + (changer,)))
            )
            affected.append(name)
    # whatever ran after an affected step ran on its old results
    closure = set(affected)
    grew = True
    while grew:
        grew = False
        for name, step in steps.items():
            if name not in closure and closure & set(step.upstream):
                closure.add(name)
                grew = True
    return sorted(closure, key=lambda n: steps[n].cell.index)


def _memory_limit(step: StepPlan) -> int | None:
    quantity = getattr(step.settings, "memory_limit", None)
    if not quantity:
        return None
    from ..pipeline.settings import memory_bytes

    return memory_bytes(quantity)
