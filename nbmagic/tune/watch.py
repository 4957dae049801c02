"""Watch a local experiment another process drives: read-only, from its study file in the store.

``%katib --watch NAME`` (or :func:`watch`) follows the trials, their curves and the best trial as the owner's
study file grows, and ends when the owner releases the study (or dies). Stopping or driving is the owner's
alone: :meth:`WatchedExperiment.stop` is one line naming the owner. ``%katib --list`` lists the store's local
experiments with who drives them.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..k8s_names import is_label
from .experiment import RUNNING, STOPPED, SUCCEEDED, Experiment, Trial
from .ownership import alive, describe, read_owner
from .space import ExperimentSpec, ParameterSpace, TuneError

SPEC_ATTR = "nbmagic_spec"  # the study's ExperimentSpec as JSON, written by the process that opens the study
FAILURES, FAILING_FOR = 5, 10.0  # reads of the study failing in a row, for at least this many s, end a watch
# (an owner re-creating the study on a loaded machine can leave the file missing or half-written for seconds)


class WatchOnly(TuneError):
    """A watching process tried to stop or drive an experiment it does not own; IPython shows the one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


def spec_record(spec: ExperimentSpec) -> str:
    return json.dumps(asdict(spec), default=str)


def spec_from_record(text: str) -> ExperimentSpec:
    data = json.loads(text)
    data["parameters"] = tuple(ParameterSpace(**{**p, "values": tuple(p["values"])}) for p in data["parameters"])
    data["additional_metrics"] = tuple(data.get("additional_metrics", ()))
    return ExperimentSpec(**data)


def trial_from_frozen(frozen: Any) -> Trial:
    """A stored Optuna trial as a :class:`Trial` (a running one stays running)."""
    from .experiment import FAILED, PRUNED

    attrs, state = frozen.user_attrs, frozen.state.name
    status = {"COMPLETE": SUCCEEDED, "PRUNED": PRUNED, "RUNNING": RUNNING, "WAITING": RUNNING}.get(state, FAILED)
    return Trial(
        number=frozen.number,
        parameters=dict(frozen.params),
        status=status,
        curve=sorted(frozen.intermediate_values.items()),
        objective=frozen.value if status == SUCCEEDED else None,
        metrics=dict(attrs.get("metrics", {})),
        run_id=attrs.get("run_id"),
        duration=attrs.get("duration"),
        cached_steps=attrs.get("cached_steps", 0),
        error=attrs.get("error"),
    )


def _budget(spec: ExperimentSpec) -> int:
    from .local import grid_size

    return min(spec.max_trials, grid_size(spec.parameters)) if spec.algorithm == "grid" else spec.max_trials


def _directory(directory: Path | None) -> Path:
    return directory or config.home() / "tune"


def _load(path: Path, name: str) -> Any:
    """The stored study, read without writing anything to it."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


class WatchedExperiment(Experiment):
    """A local experiment driven by another process, followed from its study file every ``interval`` s."""

    backend = "local"

    def __init__(self, name: str, *, directory: Path | None = None, interval: float = 0.5) -> None:
        if not is_label(name):  # the name becomes a file name in the store
            raise TuneError(f"{name!r} is not an experiment name (lowercase letters, digits and '-')")
        folder = _directory(directory)
        self.path = folder / f"{name}.journal"
        if not self.path.is_file():
            known = ", ".join(sorted(p.stem for p in folder.glob("*.journal"))) or "none"
            raise TuneError(f"no local experiment {name!r} in {folder} (experiments there: {known})")
        self._file = self._identity()
        self._study = _load(self.path, name)
        recorded = self._study.user_attrs.get(SPEC_ATTR)
        if recorded is None:
            raise TuneError(
                f"experiment {name!r} was stored without its settings (an older nbmagic): it cannot be watched"
            )
        super().__init__(name, spec_from_record(recorded))
        self.interval = interval
        self.owner: dict[str, Any] | None = None
        self._session: float | None = None  # when the current (or last seen) owner took the study
        self._closed = threading.Event()
        self.refresh()
        if not self.done:
            threading.Thread(target=self._follow, name=f"nbmagic-watch-{name}", daemon=True).start()

    @property
    def driver(self) -> str:
        """Who drives the experiment (``kernel … (PID … on …)``), or "nobody"."""
        return describe(self.owner) if self.owner else "nobody"

    def refresh(self) -> WatchedExperiment:
        """Read the owner and the trials again; ends the watch once the owner is gone."""
        owner = read_owner(self.path.with_suffix(".owner"))
        running = owner is not None and alive(owner)
        self._reload_if_replaced()
        if running:
            self._session = float(owner.get("at") or 0)  # kept after the owner goes: its trials stay classified
        frozen = self._study.get_trials(deepcopy=False)
        trials = [trial for trial in (self._trial(t) for t in frozen) if trial is not None]
        with self._lock:
            self.owner = owner if running else None
            self._trials = trials
            if not running:
                finished = sum(t.status not in (RUNNING, STOPPED) for t in trials)
                self.status = SUCCEEDED if finished >= _budget(self.spec) else STOPPED
                if self.status == STOPPED:
                    self.message = (
                        "not running: its driver stopped or ended; running the same %katib there or here resumes it"
                    )
        if not running:
            self._done.set()
        self._notify()
        return self

    def _identity(self) -> tuple[int, str]:
        """(size, digest) of the study file as read; raises while it is missing (between delete and create)."""
        data = self.path.read_bytes()
        return len(data), hashlib.sha1(data).hexdigest()

    def _reload_if_replaced(self) -> None:
        """Read the study afresh unless its file only grew (the owner ran ``--restart``): a journal is appended to,
        so the bytes already read must still be its beginning. A new file can reuse the old one's inode, so the
        bytes are compared, not the inode."""
        size, digest = self._file
        data = self.path.read_bytes()
        if len(data) < size or hashlib.sha1(data[:size]).hexdigest() != digest:
            study = _load(self.path, self.name)
            recorded = study.user_attrs.get(SPEC_ATTR)
            if recorded is None:
                raise TuneError(f"experiment {self.name!r} was replaced by a study without its settings")
            self._study, self.spec = study, spec_from_record(recorded)
        self._file = len(data), hashlib.sha1(data).hexdigest()

    def _trial(self, frozen: Any) -> Trial | None:
        """As the owner lists it: a trial its stop() ended is "stopped"; one an earlier, dead owner left
        running is not a trial (a resumed experiment asks for it again)."""
        if not frozen.user_attrs.get("interrupted"):
            return trial_from_frozen(frozen)
        ended = frozen.datetime_complete
        if self._session is None or ended is None or ended.timestamp() < self._session:
            return None
        trial = trial_from_frozen(frozen)
        trial.status, trial.error = STOPPED, frozen.user_attrs.get("error") or "stopped"
        return trial

    def _follow(self) -> None:
        failed, since = 0, 0.0
        while not self._closed.wait(self.interval) and not self.done:
            try:
                self.refresh()
                failed = 0
            except Exception as error:  # noqa: BLE001 - a half-written line or a file being replaced: read again
                failed, since = failed + 1, since if failed else time.monotonic()
                if failed >= FAILURES and time.monotonic() - since >= FAILING_FOR:
                    self._give_up(error, failed)

    def _give_up(self, error: Exception, failed: int) -> None:
        """End the watch with one line: the study could not be read several times in a row."""
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        with self._lock:
            self.status = STOPPED
            self.message = f"watch ended: {self.path} could not be read {failed} times in a row ({reason})"
        self._done.set()
        self._notify()

    def wait(self, timeout: float | None = None) -> WatchedExperiment:
        """Block until the experiment ends; an interrupt ends only this wait (the experiment is not ours to stop)."""
        self._done.wait(timeout)
        return self

    def stop(self, wait: bool = False) -> WatchedExperiment:
        """Not allowed: the experiment belongs to the process that drives it."""
        raise WatchOnly(f"experiment {self.name!r} is driven by {self.driver} and only watched here: stop it there")

    def close(self) -> None:
        """Stop following (the experiment itself goes on)."""
        self._closed.set()

    def summary(self) -> str:
        text = super().summary()
        return text + (f"\nwatched read-only; driven by {self.driver}" if self.owner else "")

    def __repr__(self) -> str:
        return f"<Experiment {self.name} (watched, driven by {self.driver}) {self.status}>"


def watch(name: str, *, directory: Path | None = None, interval: float = 0.5) -> Experiment:
    """Follow experiment ``name``: this process's own experiment if it runs here, else read-only."""
    from .local import _LIVE, _LIVE_LOCK

    path = _directory(directory) / f"{name}.journal"
    with _LIVE_LOCK:
        mine = _LIVE.get(str(path.resolve()))
    if mine is not None and not mine.done:
        return mine
    return WatchedExperiment(name, directory=directory, interval=interval)


@dataclass
class Listed:
    name: str
    driver: str
    finished: int
    running: int
    max_trials: int
    best: str


class ExperimentList:
    """The store's local experiments (``%katib --list``), as a table in notebooks and text elsewhere."""

    def __init__(self, rows: list[Listed]) -> None:
        self.rows = rows

    def text(self) -> str:
        if not self.rows:
            return "no local experiments in the store"
        lines = [f"{'experiment':<28} {'trials':>9}  {'driven by':<44} best"]
        for r in self.rows:
            lines.append(f"{r.name:<28} {r.finished:>4}/{r.max_trials:<4}  {r.driver:<44} {r.best}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(r.name)}</td><td>{r.finished}/{r.max_trials}"
            f"{f' ({r.running} running)' if r.running else ''}</td><td>{esc(r.driver)}</td><td>{esc(r.best)}</td></tr>"
            for r in self.rows
        )
        return (
            "<table><tr><th>experiment</th><th>trials</th><th>driven by</th><th>best</th></tr>" + rows + "</table>"
            if rows
            else "<p>no local experiments in the store</p>"
        )


def list_experiments(directory: Path | None = None) -> ExperimentList:
    """Each stored local experiment: its trials, who drives it now (kernel, PID) and its best trial."""
    rows = []
    for path in sorted(_directory(directory).glob("*.journal")):
        try:
            study = _load(path, path.stem)
            spec = spec_from_record(study.user_attrs[SPEC_ATTR])
        except Exception:  # noqa: BLE001 - an older or unreadable study: listed by name only
            rows.append(Listed(path.stem, "?", 0, 0, 0, "(settings not stored)"))
            continue
        owner = read_owner(path.with_suffix(".owner"))
        driven = owner is not None and alive(owner)
        probe = Experiment(path.stem, spec)
        frozen = study.get_trials(deepcopy=False)
        probe._trials = [trial_from_frozen(t) for t in frozen if not t.user_attrs.get("interrupted")]
        best = probe.best
        trials = probe.trials
        rows.append(
            Listed(
                name=path.stem,
                driver=describe(owner) if driven else "-",
                finished=sum(t.status != RUNNING for t in trials),
                running=sum(t.status == RUNNING for t in trials) if driven else 0,
                max_trials=spec.max_trials,
                best=f"trial {best.trial} {spec.objective}={best.objective:.6g}" if best else "-",
            )
        )
    return ExperimentList(rows)
