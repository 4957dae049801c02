"""A pipeline run on a Kubeflow Pipelines cluster: ``submit(yaml, host=...)`` starts it, :class:`ClusterRun` follows it.

The IR YAML goes inline with the run (one experiment look-up/creation and one ``POST /apis/v2beta1/runs``, see
:mod:`nbmagic.run.kfp_client`); no pipeline object is uploaded (uploads need a unique name and a new version on
every re-run, and leave objects behind), and the inline spec still shows the full graph in the KFP UI. UI links:
``ui_host=``, ``$KF_PIPELINES_UI_ENDPOINT``, else the host. The bearer token is refused if it appears in the
pipeline YAML or a parameter value, and never appears in reprs, errors or log records.

Metrics: the v2beta1 REST API returns only ML Metadata artifact ids; the values are read from the steps' pod
logs (:mod:`nbmagic.run.pod_logs`). The pod comes from the run's task details (the task's ``pod_name``, the
``child_tasks[].pod_name`` of the task and of its ``<task>-driver``), else from KFP's ``pipeline/runid`` label.
Lines carry the step name, so a line only counts for its own step; the last line per metric wins. A KFP cache
hit runs no code and prints no lines. ``ClusterRun.metrics`` maps each metrics output to a :class:`MetricsRef`
(MLMD ids and, once read, ``value``); ``ClusterRun.plugin_outputs`` gives what plugins publish.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .kfp_client import (
    KFP_UI_ENV,
    ClusterError,
    api_errors,
    check_parameters,
    connect,
    create_run,
    load_pipeline,
    resolve_host,
    resolve_token,
    scrub,
)
from .pod_logs import (
    K8S_NAMESPACE_ENV,
    ClusterLogsError,
    PodLogs,
    parse_metric_lines,
    pod_is_task,
    resolve_k8s_host,
    resolve_k8s_namespace,
)

__all__ = ["ClusterError", "ClusterLogsError", "ClusterRun", "ClusterRunTimeout", "parse_metric_lines", "submit"]

log = logging.getLogger(__name__)

# KFP RuntimeState -> nbmagic status (pending / running / cached / done / failed)
_RUN_STATUS = {
    None: "pending",
    "RUNTIME_STATE_UNSPECIFIED": "pending",
    "PENDING": "pending",
    "RUNNING": "running",
    "CANCELING": "running",
    "PAUSED": "running",
    "SUCCEEDED": "done",
    "SKIPPED": "done",
    "FAILED": "failed",
    "CANCELED": "failed",
}
_TASK_STATUS = dict(_RUN_STATUS, SKIPPED="cached")
FINAL = frozenset({"done", "failed"})
_METRIC_TYPES = ("system.Metrics", "system.ClassificationMetrics", "system.SlicedClassificationMetrics")


class ClusterRunTimeout(ClusterError):
    """``ClusterRun.wait`` gave up before the run finished."""


@dataclass(frozen=True)
class TaskStatus:
    """One task of a cluster run, from ``run_details.task_details``."""

    name: str
    status: str
    state: str | None
    started: _dt.datetime | None = None
    finished: _dt.datetime | None = None
    error: str | None = None
    task_id: str | None = None
    pod_name: str | None = None

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, when both are known."""
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return None


@dataclass(frozen=True)
class MetricsRef:
    """A metrics output of a task: its ML Metadata artifact ids and, once read from the pod log, its values."""

    task: str
    output: str
    artifact_type: str
    artifact_ids: tuple[str, ...] = ()
    value: dict[str, float] | None = None

    def __repr__(self) -> str:
        if self.value is not None:
            shown = ", ".join(f"{k}={v!r}" for k, v in self.value.items())
            return f"MetricsRef({self.task}.{self.output}: {shown})"
        ids = ", ".join(self.artifact_ids) or "not produced yet"
        return f"MetricsRef({self.task}.{self.output}: MLMD artifact {ids})"


# --- submit ----------------------------------------------------------------------------------


def submit(
    pipeline_yaml: str | os.PathLike,
    *,
    host: str | None = None,
    parameters: dict[str, Any] | None = None,
    pipeline_name: str | None = None,
    experiment: str | None = None,
    namespace: str | None = None,
    run_name: str | None = None,
    existing_token: str | None = None,
    credentials: Any = None,
    cookies: str | None = None,
    client_id: str | None = None,
    other_client_id: str | None = None,
    other_client_secret: str | None = None,
    proxy: str | None = None,
    ssl_ca_cert: str | None = None,
    verify_ssl: bool | None = None,
    ui_host: str | None = None,
    pipeline_root: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
    k8s_host: str | None = None,
    k8s_namespace: str | None = None,
) -> ClusterRun:
    """Start the compiled pipeline on the KFP API at ``host`` and return its :class:`ClusterRun`.

    ``k8s_host`` / ``k8s_namespace``: where the run's pod logs (metric values) are read; see module doc.
    """
    host = resolve_host(host)
    k8s_host = resolve_k8s_host(k8s_host)  # a bad value fails before anything is sent
    token = resolve_token(existing_token)
    parameters = dict(parameters or {})
    text, spec = load_pipeline(pipeline_yaml)
    if token and token in text:
        raise ClusterError("the bearer token appears in the pipeline YAML: refusing to submit it")
    for name, value in parameters.items():
        if token and token in json.dumps(value, default=str):
            raise ClusterError(f"--param {name}: holds the bearer token; tokens go in the header only")
    check_parameters(spec, parameters)
    pipeline_name = pipeline_name or spec.get("pipelineInfo", {}).get("name") or "pipeline"
    run_name = run_name or f"{pipeline_name} {_dt.datetime.now():%Y-%m-%d %H-%M-%S}"

    client = connect(
        host,
        namespace=namespace,
        existing_token=token,
        credentials=credentials,
        cookies=cookies,
        client_id=client_id,
        other_client_id=other_client_id,
        other_client_secret=other_client_secret,
        proxy=proxy,
        ssl_ca_cert=ssl_ca_cert,
        verify_ssl=verify_ssl,
        ui_host=ui_host,
    )
    with api_errors(host, "the run", token):
        info = create_run(
            client,
            text,
            parameters=parameters,
            run_name=run_name,
            experiment=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root,
            enable_caching=enable_caching,
            service_account=service_account,
        )
    run = ClusterRun(
        client,
        info,
        host=host,
        ui_host=ui_host or os.environ.get(KFP_UI_ENV) or host,
        pipeline_spec=spec,
        namespace=namespace,
        k8s_host=k8s_host,
        k8s_namespace=k8s_namespace,
        secret=token,
    )
    log.info("submitted run %s (%s) to %s: %s", run.id, run_name, host, run.url)
    return run


# --- the run ---------------------------------------------------------------------------------


class ClusterRun:
    """A pipeline run on a KFP cluster: id, url, status, per-task status, metrics (values from pod logs)."""

    def __init__(
        self,
        client: Any,
        info: Any,
        *,
        host: str,
        ui_host: str | None = None,
        pipeline_spec: dict | None = None,
        namespace: str | None = None,
        k8s_host: str | None = None,
        k8s_namespace: str | None = None,
        secret: str | None = None,
    ) -> None:
        self._client = client
        self._info = info
        self._spec = pipeline_spec or {}
        self.host = host
        self.id: str = info.run_id
        self.name: str | None = info.display_name
        self.experiment_id: str | None = info.experiment_id
        self.url = f"{(ui_host or host).rstrip('/')}/#/runs/details/{self.id}"
        self.namespace = namespace
        self.k8s_host = resolve_k8s_host(k8s_host)
        self._k8s_namespace = k8s_namespace
        self._values: dict[str, dict[str, float]] = {}  # task -> metrics read from its pod log
        self._log_pods: dict[str, str] = {}  # task -> the pod whose log held them
        self._tried_metrics = False
        self.metrics_error: str | None = None
        self._hide = lambda text: scrub(text, secret)  # a closure: the token is in no attribute
        self._pods = PodLogs(self.id, self.k8s_host, self._hide)

    # state ---------------------------------------------------------------------------------
    @property
    def info(self) -> Any:
        """The last ``V2beta1Run`` the server returned."""
        return self._info

    @property
    def state(self) -> str | None:
        """KFP's own RuntimeState (PENDING, RUNNING, SUCCEEDED, FAILED, ...)."""
        return self._info.state

    @property
    def status(self) -> str:
        """nbmagic's status: pending, running, done or failed."""
        return _RUN_STATUS.get(self._info.state, "running")

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    @property
    def error(self) -> str | None:
        """The run's error message, or the first failed task's, when KFP reports one."""
        err = self._info.error
        if err is not None and err.message:
            return err.message
        failed = [t.error for t in self.tasks.values() if t.error]
        return failed[0] if failed else None

    @property
    def tasks(self) -> dict[str, TaskStatus]:
        """Task name -> status, from ``run_details.task_details`` (empty until KFP reports tasks)."""
        details = self._details()
        known = self._all_task_names()
        if any(t.display_name in known for t in details):  # KFP's Argo backend also lists drivers and DAGs
            details = [t for t in details if t.display_name in known]
        out: dict[str, TaskStatus] = {}
        for t in details:
            name = t.display_name or t.task_id or "?"
            out[name] = TaskStatus(
                name=name,
                status=_TASK_STATUS.get(t.state, "running"),
                state=t.state,
                started=t.start_time,
                finished=t.end_time,
                error=t.error.message if t.error is not None and t.error.message else None,
                task_id=t.task_id,
                pod_name=t.pod_name,
            )
        return out

    @property
    def metrics(self) -> dict[str, MetricsRef]:
        """``task.output`` -> :class:`MetricsRef` for each metrics-typed output in the pipeline.

        Once the run succeeded, the first access reads the values from the pod logs (see
        :meth:`metric_values`) into ``MetricsRef.value``; if that fails, ``value`` stays None and
        :attr:`metrics_error` says why (call ``metric_values()`` to retry and get the error raised).
        """
        if self.status == "done" and not self._tried_metrics:
            self._tried_metrics = True
            try:
                self.metric_values()
            except ClusterError as err:
                log.info("run %s: metric values unavailable: %s", self.id, err)
        details = {t.display_name: t for t in self._details()}
        refs: dict[str, MetricsRef] = {}
        for task, output, kind in self._metric_outputs():
            detail = next((details[n] for n in self._task_names(task) if n in details), None)
            outputs = getattr(detail, "outputs", None) or {}
            ids = tuple(getattr(outputs.get(output), "artifact_ids", None) or ())
            value = self._values.get(task)
            refs[f"{task}.{output}"] = MetricsRef(task, output, kind, ids, dict(value) if value is not None else None)
        return refs

    def metric_values(self, refresh: bool = False) -> dict[str, float]:
        """Metric name -> value of every succeeded metrics step, from the lines its pod printed.

        Reads each step's pod log once (Kubernetes ``read_namespaced_pod_log``) and keeps the result;
        ``refresh=True`` reads again. Steps not (yet) succeeded are left out. Raises
        :class:`ClusterLogsError` with one line when a log cannot be read or holds no metric lines.
        """
        if refresh:
            self._values.clear()
            self._log_pods.clear()
        tasks = list(dict.fromkeys(task for task, _, _ in self._metric_outputs()))
        pending = [t for t in tasks if t not in self._values and self._task_state(t) in ("SUCCEEDED", "SKIPPED")]
        try:
            if pending:
                namespace = self.k8s_namespace
                unresolved = [t for t in pending if not self._read_by_pod_name(namespace, t)]
                if unresolved:
                    self._read_by_run_label(namespace, unresolved)
        except ClusterError as err:
            self.metrics_error = str(err)
            raise
        self.metrics_error = None
        found: dict[str, float] = {}
        for task in tasks:
            found.update(self._values.get(task, {}))
        return found

    @property
    def k8s_namespace(self) -> str:
        """The namespace of the run's pods (see module doc for where it comes from)."""
        return resolve_k8s_namespace(self._k8s_namespace, self.namespace)

    # pipeline spec and task details ---------------------------------------------------------
    def _details(self) -> list[Any]:
        return list(getattr(self._info.run_details, "task_details", None) or [])

    def _dag_tasks(self) -> dict[str, dict]:
        return self._spec.get("root", {}).get("dag", {}).get("tasks", {})

    def _task_names(self, task: str) -> tuple[str, ...]:
        """The names a task may carry: its key in the DAG and its display name (the nbmagic step)."""
        shown = self._dag_tasks().get(task, {}).get("taskInfo", {}).get("name")
        return (task, shown) if shown and shown != task else (task,)

    def _all_task_names(self) -> set[str]:
        return {n for task in self._dag_tasks() for n in self._task_names(task)}

    def _task_key(self, step: str) -> str | None:
        return next((t for t in self._dag_tasks() if step in self._task_names(t)), None)

    def _metric_outputs(self) -> list[tuple[str, str, str]]:
        components = self._spec.get("components", {})
        found = []
        for task, task_spec in self._dag_tasks().items():
            comp = components.get(task_spec.get("componentRef", {}).get("name", ""), {})
            arts = comp.get("outputDefinitions", {}).get("artifacts", {})
            for output, art in sorted(arts.items()):
                kind = art.get("artifactType", {}).get("schemaTitle", "")
                if kind in _METRIC_TYPES:
                    found.append((task, output, kind))
        return found

    def _task_state(self, task: str) -> str | None:
        names = self._task_names(task)
        return next((t.state for t in self._details() if t.display_name in names), None)

    def _pod_candidates(self, task: str) -> list[str]:
        """Pod names for a task from the task details, most likely first (see module doc)."""
        names = self._task_names(task)
        drivers = {f"{n}-driver" for n in names}
        own, driven, children = [], [], []
        for t in self._details():
            kids = [c.pod_name for c in (t.child_tasks or []) if getattr(c, "pod_name", None)]
            if t.display_name in names:
                own += [t.pod_name] if t.pod_name else []
                children += kids
            elif t.display_name in drivers:
                driven += kids
        return list(dict.fromkeys(own + driven + children))

    def _take_lines(self, task: str, pod: str, text: str) -> bool:
        names = self._task_names(task)
        values = {name: value for step, name, value in parse_metric_lines(text) if step in names}
        if values:
            self._values[task] = values
            self._log_pods[task] = pod
        return bool(values)

    def _read_by_pod_name(self, namespace: str, task: str) -> bool:
        """Try the pod names the task details give; True when the task's metric lines were found."""
        for pod in self._pod_candidates(task):
            text = self._pods.read(namespace, pod)
            if text is not None and self._take_lines(task, pod, text):
                return True
        return False

    def _read_by_run_label(self, namespace: str, tasks: list[str]) -> None:
        """Find the tasks' pods by KFP's run label, then read their logs; raise for a task left without lines."""
        pods = self._pods.run_pods(namespace)
        if not pods:
            raise ClusterLogsError(
                f"cannot read metrics of run {self.id}: no pod of step {tasks[0]!r} in namespace {namespace} "
                f"(deleted, or the run is in another namespace: set ${K8S_NAMESPACE_ENV})"
            )
        logs: dict[str, str | None] = {}
        for task in tasks:
            mine = [p for p in pods if pod_is_task(p, self._task_names(task), set(self._pod_candidates(task)))]
            for pod in mine or pods:
                name = pod.metadata.name
                if name not in logs:
                    logs[name] = self._pods.read(namespace, name)
                if logs[name] is not None and self._take_lines(task, name, logs[name]):
                    break
            else:
                read = ", ".join(n for p in (mine or pods) if logs.get(n := p.metadata.name) is not None) or "none"
                raise ClusterLogsError(
                    f"cannot read metrics of run {self.id}: no metric lines in the pod logs of step {task!r} "
                    f"(pods read: {read}); a KFP cache hit runs no code, re-run with caching off"
                )

    @property
    def plugin_outputs(self) -> dict[str, dict[str, Any]]:
        """Plugin name -> {entry: value} from ``plugins_output`` (values plugins choose to publish)."""
        out: dict[str, dict[str, Any]] = {}
        for plugin, po in (self._info.plugins_output or {}).items():
            out[plugin] = {k: getattr(v, "value", None) for k, v in (po.entries or {}).items()}
        return out

    # polling -------------------------------------------------------------------------------
    def refresh(self) -> ClusterRun:
        """Fetch the run again (``GET /apis/v2beta1/runs/{id}``)."""
        try:
            with api_errors(self.host, f"reading run {self.id}", None):
                self._info = self._client.get_run(self.id)
        except ClusterError as err:  # an auth proxy may echo the Authorization header back
            raise type(err)(self._hide(str(err))) from None
        return self

    def wait(
        self,
        timeout: float | None = None,
        poll_interval: float = 5.0,
        on_update: Callable[[ClusterRun], None] | None = None,
    ) -> ClusterRun:
        """Poll until done or failed; ``on_update(run)`` runs whenever the run or a task changes.

        Raises ClusterRunTimeout after ``timeout`` seconds (None: wait forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple | None = None
        while True:
            self.refresh()
            snapshot = (self.state, tuple((n, t.state) for n, t in self.tasks.items()))
            if snapshot != last:
                last = snapshot
                log.debug("run %s: %s", self.id, self.status)
                if on_update is not None:
                    on_update(self)
            if self.finished:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise ClusterRunTimeout(f"run {self.id} still {self.status} after {timeout:g} s: {self.url}")
            pause = poll_interval if deadline is None else min(poll_interval, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def terminate(self) -> ClusterRun:
        """Ask KFP to stop the run (``POST /apis/v2beta1/runs/{id}:terminate``)."""
        try:
            with api_errors(self.host, f"terminating run {self.id}", None):
                self._client.terminate_run(self.id)
        except ClusterError as err:
            raise type(err)(self._hide(str(err))) from None
        return self

    def logs(self, step: str, since_seconds: int | None = None) -> str:
        """The log of a step's pod (Kubernetes ``read_namespaced_pod_log``; the KFP API serves no logs);
        ``since_seconds``: only its lines of that many last seconds."""
        task = self._task_key(step)
        if task is None and step not in self.tasks:
            raise ClusterError(f"run {self.id} has no step {step!r}")
        task = task or step
        namespace = self.k8s_namespace
        for pod in self._pod_candidates(task):
            text = self._pods.read(namespace, pod, since_seconds)
            if text is not None:
                return text
        for pod in self._pods.run_pods(namespace):
            if pod_is_task(pod, self._task_names(task), set(self._pod_candidates(task))):
                text = self._pods.read(namespace, pod.metadata.name, since_seconds)
                if text is not None:
                    return text
        raise ClusterLogsError(
            f"no pod of step {step!r} of run {self.id} in namespace {namespace} "
            f"(not started, deleted, or another namespace: set ${K8S_NAMESPACE_ENV})"
        )

    # display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"ClusterRun(id={self.id!r}, status={self.status!r}, url={self.url!r})"

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(t.name)}</td><td>{esc(t.status)}</td>"
            f"<td>{'' if t.duration is None else f'{t.duration:.1f} s'}</td></tr>"
            for t in self.tasks.values()
        )
        table = f"<table><tr><th>task</th><th>status</th><th>time</th></tr>{rows}</table>" if rows else ""
        err = f"<div>error: {esc(self.error)}</div>" if self.status == "failed" and self.error else ""
        shown = ""
        if self.status == "done":
            self.metrics  # noqa: B018 - reads the values once, so the finished run shows them
        if self._values:
            shown = (
                "<div>metrics: "
                + ", ".join(f"{esc(k)}={v!r}" for t in self._values.values() for k, v in t.items())
                + "</div>"
            )
        elif self.metrics_error:
            shown = f"<div>metrics unavailable: {esc(self.metrics_error)}</div>"
        return (
            f"<div><b>KFP run</b> <code>{esc(self.id)}</code> &mdash; <b>{esc(self.status)}</b> "
            f'&mdash; <a href="{esc(self.url)}" target="_blank">{esc(self.url)}</a>{err}{shown}{table}</div>'
        )
