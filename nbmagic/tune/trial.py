"""The Katib trial runner: ``python -m nbmagic.tune.trial --host H --pipeline-package P --type lr=float --param lr=0.01 ...``

Parameters arrive as text and are turned back into their recorded types (``--type``) before the KFP
run starts. While the run goes on, the ``nbmagic.report()`` lines its steps print in their pods are copied
to this process's output (:class:`ReportRelay`), where Katib's StdOut collector reads them: Katib's
``earlyStopping`` (medianstop) then judges the trial from them. After the run, each metric is printed as a
time-stamped ``name=value`` line (later than every reported value, so it is the trial's latest).
When Katib stops the trial early it sends SIGTERM: the KFP run is terminated too.
The values come from ``ClusterRun.metric_values()``, which reads the lines the pipeline's metric step
printed from its pod log with the Kubernetes API (in the trial Job: the in-cluster service account, which
needs ``get pods/log`` and ``list pods`` in the run's namespace; ``--k8s-namespace`` when the KFP pods run
elsewhere than ``--namespace``, e.g. ``kubeflow`` for a standalone KFP).
Exit status: 0 when the run succeeded and reported the objective, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

from ..errors import NbMagicError
from ..pipeline.model import Parameter

TYPES = ("bool", "int", "float", "str")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nbmagic.tune.trial", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="KFP API endpoint")
    p.add_argument("--pipeline-package", required=True, help="compiled pipeline YAML (path)")
    p.add_argument("--pipeline-name", default="pipeline")
    p.add_argument("--experiment", default=None, help="KFP experiment for the runs")
    p.add_argument("--namespace", default=None)
    p.add_argument("--k8s-namespace", default=None, help="namespace of the run's pods (metric logs)")
    p.add_argument("--k8s-host", default=None, help="Kubernetes API URL (default: in-cluster, kubeconfig)")
    p.add_argument("--type", action="append", default=[], metavar="NAME=TYPE", help="bool|int|float|str")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--metric", action="append", default=[], metavar="NAME", help="metrics to print; the first is the objective"
    )
    p.add_argument("--store", default=None, metavar="URI", help="shared run store: record the trial's run there")
    p.add_argument("--katib-experiment", default=None, help="the Katib Experiment this trial belongs to")
    p.add_argument("--goal", default="minimize", choices=("minimize", "maximize"))
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS", help="how often the run and its logs are read")
    return p


def record_trial(args: argparse.Namespace, run: Any, parameters: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Tell the shared store which run this trial was (its experiment, objective and metrics): ``%restore best``
    there then ranks it with the experiment's other trials. One line on stderr if the store cannot be reached."""
    from ..store.backends import RemoteError
    from ..store.remote import RemoteStore
    from ..store_uri import parse

    status = str(getattr(run, "status", "") or "done").lower()
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        RemoteStore(parse(args.store)).publish_trial(
            str(getattr(run, "id", "")),
            pipeline=args.pipeline_name,
            experiment=args.katib_experiment or args.pipeline_name,
            properties={"objective": args.metric[0] if args.metric else None, "goal": args.goal},
            parameters=parameters,
            metrics=numbers,
            status="done" if status in ("done", "succeeded") else "failed",
        )
    except (NbMagicError, RemoteError) as exc:
        print(f"nbmagic trial: the run is not recorded in {args.store}: {exc}", file=sys.stderr)


def typed_parameters(types: Sequence[str], params: Sequence[str]) -> dict[str, Any]:
    """``--type``/``--param`` pairs -> {name: typed value}; a parameter without a type stays text."""
    kinds: dict[str, str] = {}
    for item in types:
        name, eq, kind = item.partition("=")
        if not eq or kind not in TYPES:
            raise NbMagicError(f"--type {item!r}: expected NAME=bool|int|float|str")
        kinds[name] = kind
    values: dict[str, Any] = {}
    for item in params:
        name, eq, raw = item.partition("=")
        if not eq:
            raise NbMagicError(f"--param {item!r}: expected NAME=VALUE")
        kind = kinds.get(name, "str")
        values[name] = Parameter(name, raw, kind).coerce(raw)
    return values


def metric_lines(metrics: dict[str, Any], names: Sequence[str], after: float | None = None) -> list[str]:
    """Time-stamped ``name=value`` lines (``nbmagic.runtime.report.katib_line``): the requested metrics
    first, then any other numeric ones; stamped after ``after`` (the latest relayed line), so that Katib
    takes them as the trial's latest values even when the step's clock ran ahead."""
    from ..runtime.report import katib_line

    at = time.time() if after is None else max(time.time(), after + 1e-6)

    order = list(names) + sorted(k for k in metrics if k not in names)
    lines = []
    for name in order:
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars, numeric strings
            except (TypeError, ValueError):
                continue
        if math.isfinite(float(value)):
            lines.append(katib_line({name: float(value)}, None, at))
    return lines


SINCE_MARGIN = 30  # s read again before the last read: a slow poll or a line written late is not missed


class ReportRelay:
    """Copies the ``nbmagic.report()`` lines a KFP run's steps print in their pods to ``out``, each once and
    in order, while the run goes on (a thread reading the steps' pod logs every ``interval`` seconds).

    Only whole lines in the exact report format are copied (``KATIB_LINE``), so nothing else a step prints
    can be taken for a metric. Logs that cannot be read yet are tried again at the next poll.
    """

    def __init__(self, run: Any, out: Any, interval: float) -> None:
        self.run, self.out, self.interval = run, out, interval
        self._last: dict[str, tuple[str, set[str]]] = {}  # step -> latest stamp copied, lines copied with it
        self._read_at: dict[str, float] = {}  # step -> when its log was last read (monotonic)
        self._warned: set[str] = set()
        logs = getattr(run, "logs", None)
        self._since = callable(logs) and "since_seconds" in _parameters(logs)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="nbmagic-report-relay", daemon=True)

    def start(self) -> ReportRelay:
        if callable(getattr(self.run, "logs", None)):
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Read the logs of the steps that have started; print their new report lines."""
        from ..errors import NbMagicError
        from ..runtime.report import KATIB_LINE

        if not callable(getattr(self.run, "logs", None)):
            return
        with self._lock:
            try:
                tasks = dict(getattr(self.run, "tasks", {}) or {})
            except NbMagicError:
                return
            except Exception as exc:  # noqa: BLE001 - relaying is best effort: the run's own result decides
                self._warn("", exc)
                return
            for step, task in tasks.items():
                if getattr(task, "status", "") not in ("running", "done", "failed"):
                    continue
                read_at = time.monotonic()
                try:
                    text = self._read(step, read_at)
                except NbMagicError:
                    continue  # not readable yet (pod starting) or not at all: the final metrics say why
                except Exception as exc:  # noqa: BLE001 - relaying is best effort: the run's own result decides
                    self._warn(step, exc)
                    continue
                self._read_at[step] = read_at
                lines = [line.rstrip("\r") for line in text.splitlines()]
                for line in lines:
                    if KATIB_LINE.match(line) and self._new(step, line):
                        print(line, file=self.out, flush=True)

    def _warn(self, step: str, exc: Exception) -> None:
        """One line on stderr per step (and per kind of error) that cannot be relayed."""
        key = f"{step}:{type(exc).__name__}"
        if key in self._warned:
            return
        self._warned.add(key)
        what = f"the log of step {step!r}" if step else "the run's steps"
        detail = " ".join(str(exc).split())[:200]
        print(f"nbmagic trial: cannot relay {what} ({type(exc).__name__}: {detail})", file=sys.stderr, flush=True)

    @property
    def latest(self) -> float | None:
        """The latest time stamp copied (epoch seconds), None before any."""
        stamps = [last for last, _lines in self._last.values()]
        if not stamps:
            return None
        whole, fraction = max(stamps).split(".")
        from datetime import datetime

        at = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return at.timestamp() + int(fraction[:6]) / 1e6

    def _read(self, step: str, now: float) -> str:
        """The step's log; after a first whole read, only its last seconds (since then, plus a margin)."""
        since = self._read_at.get(step)
        if since is None or not self._since:
            return self.run.logs(step)
        return self.run.logs(step, since_seconds=math.ceil(now - since) + SINCE_MARGIN)

    def _new(self, step: str, line: str) -> bool:
        """Whether ``line`` comes after what was copied of ``step`` (by its time stamp, not its position: a
        rotated log or a retried pod starts its lines again); records it as copied."""
        stamp = stamp_key(line.split(" ", 1)[0])
        last, same = self._last.get(step, ("", set()))
        if stamp < last or (stamp == last and line in same):
            return False
        self._last[step] = (stamp, {*same, line} if stamp == last else {line})
        return True

    def stop(self) -> None:
        """Stop the thread, then copy what is left."""
        self.close()
        if self._thread.is_alive():
            self._thread.join(30)
        self.poll()

    def close(self) -> None:
        """Stop polling (what is not copied yet stays uncopied)."""
        self._stop.set()


def _parameters(function: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def stamp_key(stamp: str) -> str:
    """A report line's ``2026-01-01T00:00:00.25Z`` as a string that sorts in time (fraction to 9 digits)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


class _Terminated(BaseException):
    """SIGTERM: Katib stops the trial (medianstop), or its Job is deleted."""


def _on_sigterm(*_: Any) -> None:
    raise _Terminated


def metric_values(run: Any) -> dict[str, Any]:
    """Metric name -> value from a finished run.

    Plain values are taken as they are; a reference object (``nbmagic.run.cluster.MetricsRef``) counts
    when it carries a ``value`` (a number, or a dict of name -> number for a task's metrics output).
    A run may also offer ``metric_values()``, which wins.
    """
    reader = getattr(run, "metric_values", None)
    raw = reader() if callable(reader) else (getattr(run, "metrics", None) or {})
    found: dict[str, Any] = {}
    for key, value in dict(raw).items():
        value = getattr(value, "value", value)
        if isinstance(value, dict):
            found.update(value)
        elif value is not None:
            found[str(key)] = value
    return found


def _default_submit(*args: Any, **kwargs: Any) -> Any:
    from ..run import cluster

    return cluster.submit(*args, **kwargs)


def main(argv: Sequence[str] | None = None, submit: Callable[..., Any] | None = None) -> int:
    """Run one trial; ``submit`` is ``nbmagic.run.cluster.submit`` unless a test passes another."""
    args = parser().parse_args(argv)
    try:
        parameters = typed_parameters(args.type, args.param)
        pipeline_yaml = Path(args.pipeline_package).read_text()
    except (NbMagicError, OSError) as exc:
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        return 1
    print(f"nbmagic trial: parameters {parameters}", file=sys.stderr)
    where = {k: v for k, v in (("k8s_host", args.k8s_host), ("k8s_namespace", args.k8s_namespace)) if v}
    terminating = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if terminating else None
    run = relay = None
    try:
        run = (submit or _default_submit)(
            pipeline_yaml,
            host=args.host,
            parameters=parameters,
            pipeline_name=args.pipeline_name,
            experiment=args.experiment,
            namespace=args.namespace,
            **where,
        )
        relay = ReportRelay(run, sys.stdout, args.poll).start()
        run.wait(poll_interval=args.poll)
        relay.stop()
    except _Terminated:
        return _terminate(run)
    except NbMagicError as exc:
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        return 1
    finally:
        if relay is not None:
            relay.close()
        if terminating:
            signal.signal(signal.SIGTERM, previous)
    status = str(getattr(run, "status", "") or "")
    try:
        metrics = metric_values(run)
    except NbMagicError as exc:  # logs unreadable: say why, print nothing Katib could mistake for metrics
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        metrics = {}
    for line in metric_lines(metrics, args.metric, relay.latest if relay is not None else None):
        print(line, flush=True)
    if args.store:
        record_trial(args, run, parameters, metrics)
    if status.lower() not in ("", "done", "succeeded"):
        print(f"nbmagic trial: run {getattr(run, 'id', '?')} ended {status}", file=sys.stderr)
        return 1
    if args.metric and args.metric[0] not in metrics:
        print(f"nbmagic trial: metric {args.metric[0]!r} was not reported by the run", file=sys.stderr)
        return 1
    return 0


def _terminate(run: Any) -> int:
    """Stopped from outside (Katib's early stopping sends SIGTERM): end the KFP run as well, in one line."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    if run is None:
        print("nbmagic trial: stopped (SIGTERM) before the KFP run started", file=sys.stderr)
        return 143
    try:
        run.terminate()
        print(f"nbmagic trial: stopped (SIGTERM): KFP run {run.id} terminated", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - exiting anyway; say why the run may go on
        print(
            f"nbmagic trial: stopped (SIGTERM); KFP run {getattr(run, 'id', '?')} not terminated: {exc}",
            file=sys.stderr,
        )
    return 143


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
