"""Local tuning: Optuna suggests, a trial runner (a local pipeline run) evaluates, in background threads.

The study lives in the run store (``config.home()/tune/<name>.journal``, Optuna's journal storage:
~5 ms per trial here vs ~30 ms for its SQLite storage), so running the same experiment again resumes it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import config
from .experiment import FAILED, PRUNED, RUNNING, STOPPED, SUCCEEDED, Experiment, Trial, TrialResult, objective_of
from .space import ExperimentSpec, ParameterSpace, TuneError

RunTrial = Callable[[dict[str, Any]], TrialResult]
KEY_ATTR = "nbmagic_key"
CODE_ATTR = "nbmagic_code"  # step name -> code hash of the steps the trials ran
# what every forked step imports first; imported once in the worker, not in each trial's steps (~20-80 ms a wave)


def make_sampler(spec: ExperimentSpec) -> tuple[Any, str]:
    """The Optuna sampler for a Katib algorithm name, and a note when it had to fall back."""
    import optuna

    samplers = optuna.samplers
    seed, name = spec.seed, spec.algorithm
    note = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return samplers.RandomSampler(seed=seed), note
        if name == "grid":
            grid = {p.name: p.grid_values() for p in spec.parameters}
            return _GridSampler(grid, seed=seed), note
        if name == "bayesianoptimization":
            if _importable("torch") and _importable("scipy"):
                return samplers.GPSampler(seed=seed), note
            note = "bayesianoptimization: Optuna's GPSampler needs torch, which is not installed; using TPE"
            return samplers.TPESampler(seed=seed), note
        if name == "tpe":
            return samplers.TPESampler(seed=seed), note
        if name == "multivariate-tpe":
            return samplers.TPESampler(seed=seed, multivariate=True), note
        if name == "cmaes":
            if not _importable("cmaes"):
                raise TuneError("--algorithm cmaes needs the 'cmaes' package: pip install cmaes")
            listed = [p.name for p in spec.parameters if p.type in ("categorical", "discrete")]
            if listed:  # said once here, not in a warning per trial
                note = (
                    f"cmaes: CMA-ES searches ranges only; {', '.join(map(repr, listed))} "
                    "(a list of values) are sampled at random"
                )
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False), note
        if name == "sobol":
            return samplers.QMCSampler(qmc_type="sobol", seed=seed), note
    raise TuneError(f"--algorithm {name!r} has no local counterpart")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _grid_sampler_class() -> type:
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """GridSampler whose end-of-grid ``study.stop()`` is left to us (it only works inside ``optimize``)."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGridSampler


def _GridSampler(grid: dict[str, list[Any]], seed: int | None) -> Any:
    return _grid_sampler_class()(grid, seed=seed)


def distributions(spec: ExperimentSpec) -> dict[str, Any]:
    """Optuna distributions for the tuned parameters."""
    from optuna import distributions as d

    found: dict[str, Any] = {}
    for p in spec.parameters:
        if p.type == "double":
            found[p.name] = d.FloatDistribution(p.min, p.max, log=p.log, step=p.step)
        elif p.type == "int":
            found[p.name] = d.IntDistribution(p.min, p.max, log=p.log, step=p.step or 1)
        else:
            found[p.name] = d.CategoricalDistribution([p.cast(v) for v in p.values])
    return found


def grid_size(parameters: tuple[ParameterSpace, ...]) -> int:
    size = 1
    for p in parameters:
        size *= len(p.grid_values())
    return size


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as JSON-friendly values (numpy scalars become float)."""
    import numbers

    plain: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            plain[str(key)] = float(value)
        elif isinstance(value, (str, bool)):
            plain[str(key)] = value
    return plain


# study file -> the experiment of this process that is running it (a second one would fail its trials)
_LIVE: dict[str, LocalExperiment] = {}
_LIVE_LOCK = threading.Lock()


def code_key(code: Mapping[str, str]) -> str:
    """One text for the steps' code hashes ("" when unknown), part of the experiment's default name."""
    return ",".join(f"{name}:{code[name]}" for name in sorted(code))


def study_path(name: str, directory: Path | None = None) -> Path:
    return (directory or config.home() / "tune") / f"{name}.journal"


class LocalExperiment(Experiment):
    """Trials run by ``run_trial`` in up to ``spec.parallel_trials`` background threads."""

    backend = "local"

    @property
    def stop_ends_trials(self) -> bool:  # type: ignore[override]
        """True when the trial runner takes the stop event (``run_trial.stoppable``): stop() then ends running
        trials itself, so Ctrl-C waits for them; a runner that cannot be stopped is not waited for."""
        return bool(getattr(self._run_trial, "stoppable", False))

    def __init__(
        self,
        spec: ExperimentSpec,
        run_trial: RunTrial,
        *,
        pipeline: str = "pipeline",
        recorded: Mapping[str, Any] | None = None,
        directory: Path | None = None,
        restart: bool = False,
        code: Mapping[str, str] | None = None,
    ) -> None:
        spec = spec.validate()
        self._code = dict(code or {})
        super().__init__(spec.experiment_name(pipeline, code_key(self._code)), spec)
        self._run_trial = run_trial
        self._recorded = recorded
        self._pipeline = pipeline
        self.path = study_path(self.name, directory)
        self._restart = restart
        self._stopping = False
        self._halt = threading.Event()  # set by stop(): running trials' runs end (their steps are killed)
        self._failed_now = 0
        self._active = 0
        self._budget = spec.max_trials
        if spec.algorithm == "grid":
            self._budget = min(spec.max_trials, grid_size(spec.parameters))
        self.resumed = 0

    # -- study ----------------------------------------------------------------------------------------
    def _open_study(self) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        from optuna.trial import TrialState

        from .watch import SPEC_ATTR, spec_record

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._restart and self.path.exists():
            self.path.unlink()
        storage = JournalStorage(JournalFileBackend(str(self.path)))
        sampler, self.note = make_sampler(self.spec)
        direction = "minimize" if self.spec.goal == "minimize" else "maximize"
        self._study = optuna.create_study(
            study_name=self.name,
            storage=storage,
            sampler=sampler,
            pruner=make_pruner(self.spec),
            direction=direction,
            load_if_exists=True,
        )
        key = self.spec.key(self._pipeline)
        recorded_key = self._study.user_attrs.get(KEY_ATTR)
        if recorded_key is None:
            self._study.set_user_attr(KEY_ATTR, key)
        elif recorded_key != key:
            raise TuneError(
                f"experiment {self.name!r} exists with another search space or objective: use a new --name or --restart"
            )
        recorded_code = self._study.user_attrs.get(CODE_ATTR)
        if self._code and recorded_code is None:
            self._study.set_user_attr(CODE_ATTR, self._code)
        elif self._code and recorded_code != self._code:
            changed = sorted(
                n for n in set(recorded_code) | set(self._code) if recorded_code.get(n) != self._code.get(n)
            )
            raise TuneError(
                f"experiment {self.name!r} ran other code of step {changed[0]!r}: its trials would mix two versions; "
                "use --restart to start over or a new --name"
            )
        record = spec_record(self.spec)  # what another process needs to watch it (tune.watch); --max-trials may change
        if self._study.user_attrs.get(SPEC_ATTR) != record:
            self._study.set_user_attr(SPEC_ATTR, record)
        self._distributions = distributions(self.spec)
        for frozen in self._study.get_trials(deepcopy=False):
            if frozen.state == TrialState.RUNNING:  # left by a kernel that died: not a trial failure
                self._study._storage.set_trial_user_attr(frozen._trial_id, "interrupted", True)
                self._study.tell(frozen.number, state=TrialState.FAIL)
                continue
            if frozen.user_attrs.get("interrupted"):
                continue
            self._trials.append(self._from_frozen(frozen))
        self.resumed = len(self._trials)

    def _from_frozen(self, frozen: Any) -> Trial:
        from .watch import trial_from_frozen

        return trial_from_frozen(frozen)

    # -- running --------------------------------------------------------------------------------------
    def start(self) -> LocalExperiment:
        """Open (or resume) the study and start the worker threads; returns at once."""
        key = str(self.path.resolve())
        with _LIVE_LOCK:
            other = _LIVE.get(key)
            if other is not None and not other.done:
                raise TuneError(
                    f"experiment {self.name!r} is still running in this kernel: stop it first (%katib --stop, or "
                    "stop() on the Experiment %katib returned) or use another --name"
                )
            _LIVE[key] = self
        try:
            from .ownership import StudyLock

            self._owner = StudyLock(self.path.with_suffix(""), self.name).acquire()  # across processes
            self._open_study()
        except BaseException:
            if getattr(self, "_owner", None) is not None:
                self._owner.release()
            with _LIVE_LOCK:
                _LIVE.pop(key, None)
            raise
        left = self._budget - len(self._trials)
        workers = max(0, min(self.spec.parallel_trials, left))
        if workers == 0:
            self._finish()
            return self
        self._active = workers
        for index in range(workers):
            threading.Thread(target=self._worker, name=f"nbmagic-tune-{self.name}-{index}", daemon=True).start()
        self._notify()
        return self

    def _next(self) -> tuple[Any, Trial] | None:
        with self._lock:
            if self._stopping or len(self._trials) >= self._budget:
                return None
            frozen = self._study.ask(self._distributions)
            trial = Trial(number=frozen.number, parameters=dict(frozen.params))
            self._trials.append(trial)
            return frozen, trial

    def _worker(self) -> None:
        try:
            while True:
                picked = self._next()
                if picked is None:
                    break
                self._notify()
                self._evaluate(*picked)
                self._notify()
        finally:
            with self._lock:
                self._active -= 1
                last = self._active == 0
            if last:
                self._finish()

    def _evaluate(self, frozen: Any, trial: Trial) -> None:
        from optuna.trial import TrialState

        started = time.perf_counter()
        try:
            values = self.spec.trial_values(trial.parameters, self._recorded)
            extra = {"stop": self._halt} if getattr(self._run_trial, "stoppable", False) else {}
            if getattr(self._run_trial, "reports", False):
                result = self._run_trial(values, _Reporter(self, frozen, trial), **extra)
            else:
                result = self._run_trial(values, **extra)
        except Exception as exc:  # the trial's failure, kept per trial
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            result = TrialResult(run_id=None, status="failed", error=last)
        if result.status not in ("done", "pruned") and self._halt.is_set():
            # stop() was asked while it ran: a step ended by the same Ctrl-C (its signal can reach the step
            # before stop() does) is an interrupted trial, asked again on resume, not a failure
            result = dataclasses.replace(result, status="stopped")
        duration = result.duration or (time.perf_counter() - started)
        objective, problem = (None, result.error or "run failed")
        if result.status == "pruned":
            self._pruned(frozen, trial, result, duration)
            return
        if result.status == "stopped":
            self._stopped(frozen, trial, result, duration)
            return
        if result.status == "done":
            objective, problem = objective_of(result.metrics, self.spec.objective)
        metrics = _plain_metrics(result.metrics or {})
        with self._lock:
            trial.run_id, trial.metrics, trial.duration = result.run_id, metrics, duration
            trial.cached_steps = result.cached_steps
            attrs = {
                "run_id": result.run_id,
                "metrics": metrics,
                "duration": duration,
                "cached_steps": result.cached_steps,
            }
            if objective is None:
                trial.status, trial.error = FAILED, problem
                attrs["error"] = problem
            else:
                trial.status, trial.objective = SUCCEEDED, objective
            for key, value in attrs.items():
                self._study._storage.set_trial_user_attr(frozen._trial_id, key, value)
            if objective is None:
                self._study.tell(frozen, state=TrialState.FAIL)
                self._failed_now += 1
                if self._failed_now >= self.spec.max_failed_trials and not self._stopping:
                    self._stopping = True
                    self.status = FAILED
                    shown = "; ".join(f"trial {n}: {e}" for n, e in self.errors[-3:])
                    self.message = f"stopped after {self._failed_now} failed trials (--max-failed {self.spec.max_failed_trials}): {shown}"
            else:
                self._study.tell(frozen, objective)

    def _pruned(self, frozen: Any, trial: Trial, result: TrialResult, duration: float) -> None:
        """Stopped early: kept as Optuna's PRUNED (its last reported value), not a failure, not the best."""
        from optuna.trial import TrialState

        with self._lock:
            trial.run_id, trial.duration, trial.cached_steps = result.run_id, duration, result.cached_steps
            trial.status, trial.error = PRUNED, result.error
            for key, value in {
                "run_id": result.run_id,
                "duration": duration,
                "cached_steps": result.cached_steps,
            }.items():
                self._study._storage.set_trial_user_attr(frozen._trial_id, key, value)
            self._study.tell(frozen, state=TrialState.PRUNED)

    def _stopped(self, frozen: Any, trial: Trial, result: TrialResult, duration: float) -> None:
        """Ended by stop(): kept in the study as interrupted, so a resumed experiment asks for it again."""
        from optuna.trial import TrialState

        with self._lock:
            trial.run_id, trial.duration, trial.cached_steps = result.run_id, duration, result.cached_steps
            trial.status, trial.error = STOPPED, result.error or "stopped"
            for key, value in {"run_id": result.run_id, "duration": duration, "interrupted": True}.items():
                self._study._storage.set_trial_user_attr(frozen._trial_id, key, value)
            self._study.tell(frozen, state=TrialState.FAIL)

    def _finish(self) -> None:
        with self._lock:
            if self.status == RUNNING:
                self.status = STOPPED if self._stopping else SUCCEEDED
            if self.status == STOPPED and not self.message:
                self.message = "stopped: finished trials are kept; run the same experiment again to resume"
        if getattr(self, "_owner", None) is not None:
            self._owner.release()
        self._done.set()
        with _LIVE_LOCK:
            if _LIVE.get(str(self.path.resolve())) is self:
                del _LIVE[str(self.path.resolve())]
        self._notify()

    def stop(self, wait: bool = False) -> LocalExperiment:
        """Start no new trial and end the running ones (their steps' process trees are killed); finished
        trials are kept and the study stays resumable. ``wait=True`` blocks until the trials have ended."""
        with self._lock:
            self._stopping = True
        self._halt.set()
        if wait:
            self._done.wait()
        return self


def running() -> list[LocalExperiment]:
    """The local experiments of this process that are still running."""
    with _LIVE_LOCK:
        return [e for e in _LIVE.values() if not e.done]


def stop_running(name: str | None = None) -> list[LocalExperiment]:
    """Stop this process's running local experiments (or the one named ``name``), waiting for their trials."""
    chosen = [e for e in running() if name in (None, e.name)]
    for experiment in chosen:
        experiment.stop(wait=True)
    return chosen


def make_pruner(spec: ExperimentSpec) -> Any:
    """Katib's medianstop as Optuna's MedianPruner (``start_step`` is counted by :class:`_Reporter`)."""
    import optuna

    if spec.early_stopping == "medianstop":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.min_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


class _Reporter:
    """Receives a running trial's ``nbmagic.report()`` values; returns True when the trial should stop."""

    def __init__(self, experiment: LocalExperiment, optuna_trial: Any, trial: Trial) -> None:
        self._experiment, self._optuna, self._trial = experiment, optuna_trial, trial
        spec = experiment.spec
        self.wait_from = spec.start_step if spec.early_stopping else 0  # values before it are never pruned

    def __call__(self, step: int | None, metrics: Mapping[str, float]) -> bool:
        spec = self._experiment.spec
        value = metrics.get(spec.objective)
        if value is None:
            return False
        with self._experiment._lock:
            curve = self._trial.curve
            step = step if step is not None else (curve[-1][0] + 1 if curve else 0)
            if any(seen == step for seen, _ in curve):
                return False  # Optuna keeps the first value of a step
            curve.append((step, float(value)))
            self._optuna.report(float(value), step)
            prune = bool(spec.early_stopping) and len(curve) >= spec.start_step and self._optuna.should_prune()
        self._experiment._notify()
        return prune


def run_local(spec: ExperimentSpec, run_trial: RunTrial, **options: Any) -> LocalExperiment:
    """Start a local experiment in the background and return it (``options`` as for :class:`LocalExperiment`)."""
    return LocalExperiment(spec, run_trial, **options).start()


def pipeline_trial_runner(
    plan: Any, *, cache: bool = True, experiment: str | None = None, runner: Any = None
) -> RunTrial:
    """A ``run_trial`` that runs the recorded pipeline on the local runner (``nbmagic.run.local``).

    Steps that read no tuned parameter hit the cache after the first trial.
    """
    shared: list[Any] = [runner]

    def run_trial(
        parameters: dict[str, Any], reporter: Callable[..., bool] | None = None, stop: threading.Event | None = None
    ) -> TrialResult:
        from ..run.local import LocalRunner

        if shared[0] is None:
            shared[0] = LocalRunner()  # it preloads what the steps import; the worker has the step runtime
        started = time.perf_counter()
        watcher = ReportWatcher(shared[0].store, reporter) if reporter is not None else None
        try:
            run = shared[0].run(
                plan,
                parameters,
                cache=cache,
                experiment=experiment,
                listener=watcher.listen if watcher else None,
                stop=stop,
            )
        finally:
            if watcher is not None:
                watcher.close()
        error = None
        if run.status == "stopped":
            return TrialResult(
                run_id=run.id,
                status="stopped",
                metrics=dict(run.metrics),
                cached_steps=run.cached_steps,
                error="stopped with the experiment",
                duration=time.perf_counter() - started,
            )
        if run.status == "pruned":
            pruned = [s for s in run.steps.values() if s.status == "pruned"]
            return TrialResult(
                run_id=run.id,
                status="pruned",
                metrics=dict(run.metrics),
                cached_steps=sum(1 for state in run.steps.values() if state.cached),
                error=pruned[0].error if pruned else "pruned",
                duration=time.perf_counter() - started,
            )
        if run.status != "done":
            failed = [s for s in run.steps.values() if s.status in ("failed", "timed_out")]
            first = (run.error or (failed[0].error if failed else "") or "run failed").strip().splitlines()
            error = (f"step {failed[0].name!r}: " if failed else "") + (first[-1] if first else "run failed")
        return TrialResult(
            run_id=run.id,
            status="done" if run.status == "done" else "failed",
            metrics=dict(run.metrics),
            cached_steps=sum(1 for state in run.steps.values() if state.cached),
            error=error,
            duration=time.perf_counter() - started,
        )

    run_trial.reports = True  # type: ignore[attr-defined] - takes a reporter for nbmagic.report() values
    run_trial.stoppable = True  # type: ignore[attr-defined] - takes a stop event that ends the run
    return run_trial


class ReportWatcher:
    """Follows the report files of a run's running steps; writes the prune mark when the reporter says so."""

    POLL = 0.005  # a step may be waiting for the decision on its value
    SLOW_POLL = 0.1  # nothing can be pruned: values only feed the curves

    def __init__(self, store: Any, reporter: Callable[..., bool]) -> None:
        self._store, self._reporter = store, reporter
        self._files: dict[str, int] = {}  # path -> bytes read
        self._lines: dict[str, int] = {}  # path -> lines decided
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one reader at a time: the poller, or close()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nbmagic-reports", daemon=True)
        self._thread.start()

    def listen(self, run: Any, state: Any) -> None:
        if state is not None and state.status == "running":
            path = str(self._store.run_dir(run.id) / f"{state.name}.reports.jsonl")
            with self._lock:
                if path not in self._files:
                    self._files[path] = 0
                    self._lines[path] = 0
                    from ..runtime.report import watched_path

                    # from which reported value on report() waits for the decision (0: it never needs to)
                    Path(watched_path(path)).write_text(str(getattr(self._reporter, "wait_from", 1)))

    def _loop(self) -> None:
        poll = self.POLL if getattr(self._reporter, "wait_from", 1) else self.SLOW_POLL
        while not self._closed.wait(poll):
            self.read()

    def read(self) -> None:
        with self._reading:
            self._read()

    def _read(self) -> None:
        import json

        from ..runtime.report import ack_path, prune_path

        with self._lock:
            files = list(self._files.items())
        for path, offset in files:
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            with self._lock:
                self._files[path] = offset + len(complete)
            lines = complete.splitlines()
            for line in lines:
                record = json.loads(line)
                if self._reporter(record.get("step"), record.get("metrics", {})) and not self._closed.is_set():
                    Path(prune_path(path)).touch()
            if lines:
                with self._lock:
                    self._lines[path] += len(lines)
                    done = self._lines[path]
                tmp = f"{path}.ack.tmp"
                Path(tmp).write_text(str(done))
                os.replace(tmp, ack_path(path))

    def close(self) -> None:
        """Stop polling and take in what is left, in the caller's thread (no wait for the poller to wake)."""
        self._closed.set()
        self.read()
