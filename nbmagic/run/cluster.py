"""Run a compiled pipeline on a Kubeflow Pipelines cluster with ``kfp.Client``, and follow it.

``submit(yaml, host=...)`` sends the IR YAML inline with the run
(``kfp.Client.create_run_from_pipeline_package``): one experiment look-up/creation and one
``POST /apis/v2beta1/runs``. We do not upload a pipeline object first: uploads need a unique
pipeline name and a new version on every re-run, and leave objects behind that nbmagic would
have to manage; an inline spec still shows the full graph in the KFP UI.

Where settings come from (first wins):

* host: ``host=`` argument, ``$NBMAGIC_KFP_HOST``, ``$KF_PIPELINES_ENDPOINT`` (kfp's own).
  It must be a full ``http://`` or ``https://`` URL.
* UI links: ``ui_host=``, ``$KF_PIPELINES_UI_ENDPOINT`` (kfp's own), else the host.
* bearer token: ``existing_token=``, ``$NBMAGIC_KFP_TOKEN``. kfp.Client reads no token from the
  environment itself; its other auth (``credentials=`` such as
  ``kfp.client.ServiceAccountTokenVolumeCredentials``, IAP ``client_id``/``other_client_id``/
  ``other_client_secret`` or ``$KF_PIPELINES_IAP_OAUTH2_CLIENT_ID`` and friends, ``cookies=``)
  is passed through unchanged.
* experiment: ``experiment=``, kfp's ``$KF_PIPELINES_DEFAULT_EXPERIMENT_NAME`` /
  ``$KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME``, else ``Default``; reused when it exists.

The token only ever travels in the ``Authorization`` header: it is refused if it appears in the
pipeline YAML or a parameter value, and never appears in reprs, errors or log records.

Metrics: the v2beta1 REST API does not return metric values. A run's
``run_details.task_details[].outputs`` gives, per task output, the ML Metadata artifact ids only;
the values live in ML Metadata, whose gRPC API is not exposed by the KFP API server (and the KFP
UI's artifact endpoints are not part of the swagger). The compiled component therefore prints one
line per metric on its stdout, after the cell ran::

    nbmagic-metric {"step": "evaluate", "name": "accuracy", "value": 0.93}

and :meth:`ClusterRun.metric_values` reads them back from the task's pod log with the Kubernetes
core API (``CoreV1Api.read_namespaced_pod_log``, container ``main``: where Argo runs the
component). The pod comes from the run's task details: the task's ``pod_name``, the
``child_tasks[].pod_name`` of the task and of its ``<task>-driver`` (KFP's Argo backend reports
each Argo node id there; with Argo's v1 pod names that is the pod name). When none of those pods
exists (Argo's v2 pod names differ from node ids), the run's pods are listed by KFP's
``pipeline/runid`` label. Lines carry the step name, so a line is only counted for its own step;
the last line per metric wins (nbmagic's lines come after anything the cell printed).

Kubernetes access (first wins): ``k8s_host=`` / ``$NBMAGIC_K8S_HOST`` (a plain URL such as a
``kubectl proxy``; tests), in-cluster service account (the Katib trial Job), ``$KUBECONFIG`` /
``~/.kube/config``. Namespace of the run's pods: ``k8s_namespace=``, ``$NBMAGIC_K8S_NAMESPACE``,
the run's ``namespace`` (multi-user KFP), the in-cluster namespace file, the kubeconfig context's
namespace, else ``kubeflow`` (standalone KFP). Needs ``get`` on ``pods/log`` there (``list`` on
``pods`` for the label fallback). A KFP cache hit runs no code and so prints no lines: its
metrics cannot be read this way (compile metric steps with caching off to always get them).

``ClusterRun.metrics`` maps each ``system.Metrics``-typed output to a :class:`MetricsRef`
holding the MLMD ids and, once the run succeeded and the logs were read, ``value`` (metric name ->
number; read on first access, a failure is kept in ``ClusterRun.metrics_error``).
``ClusterRun.plugin_outputs`` returns the values plugins (e.g. MLflow) publish in
``plugins_output``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import io
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nbmagic.errors import NbMagicError

HOST_ENV = "NBMAGIC_KFP_HOST"
TOKEN_ENV = "NBMAGIC_KFP_TOKEN"
KFP_HOST_ENV = "KF_PIPELINES_ENDPOINT"
KFP_UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
K8S_HOST_ENV = "NBMAGIC_K8S_HOST"
K8S_NAMESPACE_ENV = "NBMAGIC_K8S_NAMESPACE"
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
RUN_ID_LABEL = "pipeline/runid"  # KFP labels every pod of a run with it

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


class ClusterError(NbMagicError):
    """Submitting to or talking with the KFP API server failed."""


class ClusterRunTimeout(ClusterError):
    """``ClusterRun.wait`` gave up before the run finished."""


class ClusterLogsError(ClusterError):
    """The metric lines could not be read from the run's pod logs (access, pod gone, no lines)."""


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


# --- settings --------------------------------------------------------------------------------


def resolve_host(host: str | None = None) -> str:
    """The KFP API URL from ``host`` or the environment, validated, without a trailing slash."""
    value = host or os.environ.get(HOST_ENV) or os.environ.get(KFP_HOST_ENV)
    if not value:
        raise ClusterError(f"no KFP host: pass --host URL or set ${HOST_ENV}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ClusterError(f"KFP host {value!r} is not an http(s)://HOST[:PORT][/PATH] URL")
    try:
        _ = parts.port
    except ValueError:
        raise ClusterError(f"KFP host {value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def resolve_token(existing_token: str | None = None) -> str | None:
    """The bearer token from the argument or ``$NBMAGIC_KFP_TOKEN`` (None when neither is set)."""
    return existing_token or os.environ.get(TOKEN_ENV) or None


def _load_pipeline(pipeline_yaml: str | os.PathLike) -> tuple[str, dict]:
    """(text, pipeline spec dict) from IR YAML text or a path to it."""
    import yaml

    if isinstance(pipeline_yaml, os.PathLike) or (
        "\n" not in pipeline_yaml
        and (pipeline_yaml.endswith((".yaml", ".yml", ".json")) or os.path.exists(pipeline_yaml))
    ):
        path = Path(pipeline_yaml)
        try:
            text = path.read_text()
        except OSError as err:
            raise ClusterError(f"cannot read pipeline file {str(path)!r}: {err.strerror}") from None
    else:
        text = str(pipeline_yaml)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise ClusterError(f"pipeline YAML does not parse: {str(err).splitlines()[0]}") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ClusterError("pipeline YAML is not a compiled KFP pipeline (no 'root' in its first document)")
    return text, docs[0]


_PARAM_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "NUMBER_INTEGER": ("int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "NUMBER_DOUBLE": ("float", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "STRING": ("str", lambda v: isinstance(v, str)),
    "BOOLEAN": ("bool", lambda v: isinstance(v, bool)),
    "LIST": ("list", lambda v: isinstance(v, list)),
    "STRUCT": ("dict", lambda v: isinstance(v, dict)),
}


def check_parameters(spec: dict, parameters: dict[str, Any]) -> None:
    """Every value names a pipeline input and has its type, before anything is sent."""
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, value in parameters.items():
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise ClusterError(f"--param {name}: not a pipeline parameter (known: {known})")
        kind = inputs[name].get("parameterType", "")
        label, ok = _PARAM_TYPES.get(kind, (kind, lambda v: True))
        if not ok(value):
            raise ClusterError(f"--param {name}: expected {label}, got {type(value).__name__} {value!r}")


def _scrub(text: str, secret: str | None) -> str:
    """One line, with the secret (if any) masked."""
    line = " ".join(str(text).split())
    return line.replace(secret, "***") if secret else line


# --- errors from kfp / kfp_server_api / urllib3 -> one line ----------------------------------


@contextlib.contextmanager
def _api_errors(host: str, what: str, token: str | None) -> Iterator[None]:
    import kfp_server_api
    import urllib3

    try:
        yield
    except NbMagicError:
        raise
    except kfp_server_api.ApiException as err:
        detail = err.reason or ""
        try:
            detail = json.loads(err.body or "{}").get("message") or detail
        except (ValueError, AttributeError):
            pass
        hint = " (check the token: existing_token or $NBMAGIC_KFP_TOKEN)" if err.status in (401, 403) else ""
        if err.status == 404 and what == "connecting":
            detail = "no KFP v2beta1 API here (GET /apis/v2beta1/healthz answered 404)"
        raise ClusterError(
            _scrub(f"KFP API at {host} refused {what}: HTTP {err.status} {detail}{hint}", token)
        ) from None
    except urllib3.exceptions.HTTPError as err:
        reason = str(getattr(err, "reason", None) or err)
        # drop urllib3's "HTTPConnection(host=..., port=...): " / "<... object at 0x..>: " prefixes
        reason = re.sub(r"^(\w+\([^)]*\)|<[^>]*>):\s*", "", reason)
        raise ClusterError(_scrub(f"cannot reach the KFP API at {host} ({what}): {reason}", token)) from None
    except (ValueError, TimeoutError, OSError) as err:
        raise ClusterError(_scrub(f"KFP {what} at {host} failed: {err}", token)) from None


def _client_class() -> type:
    import kfp

    class _Client(kfp.Client):
        """kfp.Client whose start-up health check tries once instead of 5 times 5 s apart."""

        healthz: Any = None

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            self.healthz = self.healthzs.healthz_service_get_healthz()
            return self.healthz

    return _Client


def connect(
    host: str | None = None, *, namespace: str | None = None, existing_token: str | None = None, **client_options: Any
) -> Any:
    """A ``kfp.Client`` for ``host`` (see module doc for defaults); errors are one-line ClusterErrors."""
    host = resolve_host(host)
    token = resolve_token(existing_token)
    options = {k: v for k, v in client_options.items() if v is not None}
    if namespace:
        options["namespace"] = namespace
    with _api_errors(host, "connecting", token), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client = _client_class()(host=host, existing_token=token, **options)
    if client.healthz is not None and client.healthz.multi_user and not client.get_user_namespace():
        raise ClusterError(f"KFP at {host} is multi-user: pass a namespace (--namespace NS)")
    return client


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
    text, spec = _load_pipeline(pipeline_yaml)
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
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="nbmagic-kfp-") as tmp:
        package = Path(tmp) / "pipeline.yaml"
        package.write_text(text)
        with _api_errors(host, "the run", token), contextlib.redirect_stdout(printed):
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=parameters,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                pipeline_root=pipeline_root,
                enable_caching=enable_caching,
                service_account=service_account,
            )
    for line in printed.getvalue().splitlines():
        log.debug("kfp: %s", _scrub(line, token))
    run = ClusterRun(
        client,
        result.run_info,
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


# --- metric lines from pod logs (Kubernetes core API) ----------------------------------------


def _metric_line_pattern() -> re.Pattern[str]:
    from nbmagic.runtime.component import METRIC_LINE_PREFIX

    # anywhere after a word boundary: `kubectl logs --timestamps` and log shippers put text in front
    return re.compile(r"(?:^|\s)" + re.escape(METRIC_LINE_PREFIX) + r"(\{.*\})\s*$")


def parse_metric_lines(text: str) -> list[tuple[str, str, float]]:
    """``(step, name, value)`` for each well-formed ``nbmagic-metric {...}`` line, in log order."""
    pattern = _metric_line_pattern()
    found = []
    for line in text.splitlines():
        m = pattern.search(line)
        if not m:
            continue
        try:
            item = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        step, name, value = item.get("step"), item.get("name"), item.get("value")
        if (
            isinstance(step, str)
            and isinstance(name, str)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            found.append((step, name, value))
    return found


def resolve_k8s_host(k8s_host: str | None = None) -> str | None:
    """An explicit Kubernetes API URL from the argument or ``$NBMAGIC_K8S_HOST`` (None: use the usual config)."""
    value = (k8s_host or os.environ.get(K8S_HOST_ENV) or "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClusterError(f"Kubernetes API host {value!r} ({K8S_HOST_ENV}) is not an http(s)://HOST[:PORT] URL")
    return value.rstrip("/")


def kubernetes_client(k8s_host: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for reading pod logs (see :func:`nbmagic.kube.api_client`)."""
    from ..kube import api_client

    try:
        return api_client(resolve_k8s_host(k8s_host))
    except NbMagicError as exc:
        raise ClusterLogsError(f"cannot read pod logs: {exc}; set ${K8S_HOST_ENV} or KUBECONFIG") from None


def _kubeconfig_namespace() -> str | None:
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        return (active or {}).get("context", {}).get("namespace") or None
    except Exception:  # noqa: BLE001 - no kubeconfig: no namespace from it
        return None


def resolve_k8s_namespace(k8s_namespace: str | None = None, run_namespace: str | None = None) -> str:
    """Where the run's pods are (see module doc for the order), validated as a Kubernetes name."""
    value = k8s_namespace or os.environ.get(K8S_NAMESPACE_ENV) or run_namespace
    if not value:
        try:
            value = Path(IN_CLUSTER_NAMESPACE_FILE).read_text().strip() or None
        except OSError:
            value = None
    value = value or _kubeconfig_namespace() or "kubeflow"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value) or len(value) > 63:
        raise ClusterError(f"Kubernetes namespace {value!r} is not a valid namespace name")
    return value


def _k8s_detail(err: Any) -> str:
    """``HTTP 403 <message>`` from a kubernetes ApiException (the Status body's message, not headers)."""
    message = err.reason or ""
    try:
        message = json.loads(err.body or "{}").get("message") or message
    except (ValueError, AttributeError, TypeError):
        pass
    return f"HTTP {err.status} {message}".strip()


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
        self._core: Any = None
        self._values: dict[str, dict[str, float]] = {}  # task -> metrics read from its pod log
        self._log_pods: dict[str, str] = {}  # task -> the pod whose log held them
        self._tried_metrics = False
        self.metrics_error: str | None = None
        self._hide = lambda text: _scrub(text, secret)  # a closure: the token is in no attribute

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
                core = self._core_api()
                namespace = self.k8s_namespace
                unresolved = [t for t in pending if not self._read_by_pod_name(core, namespace, t)]
                if unresolved:
                    self._read_by_run_label(core, namespace, unresolved)
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

    # reading pod logs ------------------------------------------------------------------------
    def _core_api(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(kubernetes_client(self.k8s_host))
        return self._core

    def _secret_free(self, text: str) -> str:
        text = self._hide(text)
        keys = getattr(getattr(getattr(self._core, "api_client", None), "configuration", None), "api_key", None)
        for value in (keys or {}).values():
            for secret in {str(value), str(value).split(" ")[-1]}:
                if len(secret) >= 8:
                    text = text.replace(secret, "***")
        return text

    def _k8s_call(self, what: str, call: Callable[[], Any], namespace: str) -> Any:
        """Run one Kubernetes API call; None on 404, one-line ClusterLogsError on anything else."""
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - sorted out by _k8s_failure
            return self._k8s_failure(what, err, namespace)

    def _k8s_failure(self, what: str, err: Exception, namespace: str) -> None:
        """None for HTTP 404 (no such pod); otherwise raise a ClusterLogsError of one line, without secrets."""
        import urllib3
        from kubernetes.client.rest import ApiException

        if isinstance(err, ApiException):
            if err.status == 404:
                return None
            hint = ""
            if err.status in (401, 403):
                verb = "list pods" if what.startswith("list") else "get pods/log"
                hint = f" (the Kubernetes identity needs {verb} in namespace {namespace})"
            raise ClusterLogsError(
                self._secret_free(
                    f"cannot read the pod logs of run {self.id}: {what} in namespace {namespace} refused: "
                    f"{_k8s_detail(err)}{hint}"
                )
            ) from None
        if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
            reason = re.sub(r"^(\w+\([^)]*\)|<[^>]*>):\s*", "", str(getattr(err, "reason", None) or err))
            host = getattr(getattr(self._core.api_client, "configuration", None), "host", "?")
            raise ClusterLogsError(
                self._secret_free(
                    f"cannot read the pod logs of run {self.id}: cannot reach the Kubernetes API at {host} "
                    f"({what}): {reason}"
                )
            ) from None
        raise err

    def _pod_log(self, core: Any, namespace: str, pod: str) -> str | None:
        """The log of a pod's ``main`` container (Argo's), or of its only container; None if no such pod."""
        from kubernetes.client.rest import ApiException

        for container in ("main", None):
            try:
                # preload off: the client would otherwise json-parse a log that happens to be valid JSON
                response = core.read_namespaced_pod_log(
                    pod, namespace, container=container, _preload_content=False, _request_timeout=(10, 120)
                )
                return response.data.decode("utf-8", "replace")
            except ApiException as err:
                if err.status == 400 and container is not None:
                    continue  # no container "main": not an Argo pod, ask for its only container
                return self._k8s_failure(f"reading the log of pod {pod}", err, namespace)
            except Exception as err:  # noqa: BLE001 - connection errors: one line
                return self._k8s_failure(f"reading the log of pod {pod}", err, namespace)
        return None

    def _take_lines(self, task: str, pod: str, text: str) -> bool:
        names = self._task_names(task)
        values = {name: value for step, name, value in parse_metric_lines(text) if step in names}
        if values:
            self._values[task] = values
            self._log_pods[task] = pod
        return bool(values)

    def _read_by_pod_name(self, core: Any, namespace: str, task: str) -> bool:
        """Try the pod names the task details give; True when the task's metric lines were found."""
        for pod in self._pod_candidates(task):
            text = self._pod_log(core, namespace, pod)
            if text is not None and self._take_lines(task, pod, text):
                return True
        return False

    def _run_pods(self, core: Any, namespace: str) -> list[Any]:
        listed = self._k8s_call(
            "listing the run's pods",
            lambda: core.list_namespaced_pod(
                namespace, label_selector=f"{RUN_ID_LABEL}={self.id}", _request_timeout=(10, 60)
            ),
            namespace,
        )
        return list(getattr(listed, "items", None) or [])

    def _read_by_run_label(self, core: Any, namespace: str, tasks: list[str]) -> None:
        """Find the tasks' pods by KFP's run label, then read their logs; raise for a task left without lines."""
        pods = self._run_pods(core, namespace)
        if not pods:
            raise ClusterLogsError(
                f"cannot read metrics of run {self.id}: no pod of step {tasks[0]!r} in namespace {namespace} "
                f"(deleted, or the run is in another namespace: set ${K8S_NAMESPACE_ENV})"
            )
        logs: dict[str, str | None] = {}
        for task in tasks:
            mine = [p for p in pods if _pod_is_task(p, self._task_names(task), set(self._pod_candidates(task)))]
            for pod in mine or pods:
                name = pod.metadata.name
                if name not in logs:
                    logs[name] = self._pod_log(core, namespace, name)
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
            with _api_errors(self.host, f"reading run {self.id}", None):
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

    def logs(self, step: str) -> str:
        """The log of a step's pod (Kubernetes ``read_namespaced_pod_log``; the KFP API serves no logs)."""
        task = self._task_key(step)
        if task is None and step not in self.tasks:
            raise ClusterError(f"run {self.id} has no step {step!r}")
        task = task or step
        core, namespace = self._core_api(), self.k8s_namespace
        for pod in self._pod_candidates(task):
            text = self._pod_log(core, namespace, pod)
            if text is not None:
                return text
        for pod in self._run_pods(core, namespace):
            if _pod_is_task(pod, self._task_names(task), set(self._pod_candidates(task))):
                text = self._pod_log(core, namespace, pod.metadata.name)
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


def _pod_is_task(pod: Any, names: tuple[str, ...], node_ids: set[str]) -> bool:
    """Whether a listed pod runs the task: by Argo node id, KFP's task labels, or Argo's node name."""
    meta = pod.metadata
    labels, notes = meta.labels or {}, meta.annotations or {}
    if meta.name in node_ids or notes.get("workflows.argoproj.io/node-id") in node_ids:
        return True
    if labels.get("pipelines.kubeflow.org/task_name") in names:
        return True
    if notes.get("pipelines.kubeflow.org/task_path", "").split(".")[-1] in names:
        return True
    parts = [re.sub(r"\(\d+\)$", "", p) for p in notes.get("workflows.argoproj.io/node-name", "").split(".")]
    return any(p in names for p in parts[1:])
