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
the values live in ML Metadata (gRPC, outside this API). ``ClusterRun.metrics`` therefore maps
each ``system.Metrics``-typed output to a :class:`MetricsRef` holding those ids (``value`` is
``None``); ``ClusterRun.plugin_outputs`` returns the values plugins (e.g. MLflow) publish in
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from nbmagic.errors import NbMagicError

HOST_ENV = "NBMAGIC_KFP_HOST"
TOKEN_ENV = "NBMAGIC_KFP_TOKEN"
KFP_HOST_ENV = "KF_PIPELINES_ENDPOINT"
KFP_UI_ENV = "KF_PIPELINES_UI_ENDPOINT"

log = logging.getLogger(__name__)

# KFP RuntimeState -> nbmagic status (pending / running / cached / done / failed)
_RUN_STATUS = {
    None: "pending", "RUNTIME_STATE_UNSPECIFIED": "pending", "PENDING": "pending",
    "RUNNING": "running", "CANCELING": "running", "PAUSED": "running",
    "SUCCEEDED": "done", "SKIPPED": "done",
    "FAILED": "failed", "CANCELED": "failed",
}
_TASK_STATUS = dict(_RUN_STATUS, SKIPPED="cached")
FINAL = frozenset({"done", "failed"})
_METRIC_TYPES = ("system.Metrics", "system.ClassificationMetrics", "system.SlicedClassificationMetrics")


class ClusterError(NbMagicError):
    """Submitting to or talking with the KFP API server failed."""


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
    """A metrics output of a task: the v2beta1 API gives its ML Metadata artifact ids, not values."""

    task: str
    output: str
    artifact_type: str
    artifact_ids: tuple[str, ...] = ()
    value: None = None

    def __repr__(self) -> str:
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
        parts.port
    except ValueError:
        raise ClusterError(f"KFP host {value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def resolve_token(existing_token: str | None = None) -> str | None:
    """The bearer token from the argument or ``$NBMAGIC_KFP_TOKEN`` (None when neither is set)."""
    return existing_token or os.environ.get(TOKEN_ENV) or None


def _load_pipeline(pipeline_yaml: str | os.PathLike) -> tuple[str, dict]:
    """(text, pipeline spec dict) from IR YAML text or a path to it."""
    import yaml

    if isinstance(pipeline_yaml, os.PathLike) or ("\n" not in pipeline_yaml and (
            pipeline_yaml.endswith((".yaml", ".yml", ".json")) or os.path.exists(pipeline_yaml))):
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
        raise ClusterError(_scrub(f"KFP API at {host} refused {what}: HTTP {err.status} {detail}{hint}",
                                  token)) from None
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


def connect(host: str | None = None, *, namespace: str | None = None, existing_token: str | None = None,
            **client_options: Any) -> Any:
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

def submit(pipeline_yaml: str | os.PathLike, *, host: str | None = None,
           parameters: dict[str, Any] | None = None, pipeline_name: str | None = None,
           experiment: str | None = None, namespace: str | None = None, run_name: str | None = None,
           existing_token: str | None = None, credentials: Any = None, cookies: str | None = None,
           client_id: str | None = None, other_client_id: str | None = None,
           other_client_secret: str | None = None, proxy: str | None = None,
           ssl_ca_cert: str | None = None, verify_ssl: bool | None = None,
           ui_host: str | None = None, pipeline_root: str | None = None,
           enable_caching: bool | None = None, service_account: str | None = None) -> "ClusterRun":
    """Start the compiled pipeline on the KFP API at ``host`` and return its :class:`ClusterRun`."""
    host = resolve_host(host)
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

    client = connect(host, namespace=namespace, existing_token=token, credentials=credentials,
                     cookies=cookies, client_id=client_id, other_client_id=other_client_id,
                     other_client_secret=other_client_secret, proxy=proxy, ssl_ca_cert=ssl_ca_cert,
                     verify_ssl=verify_ssl, ui_host=ui_host)
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="nbmagic-kfp-") as tmp:
        package = Path(tmp) / "pipeline.yaml"
        package.write_text(text)
        with _api_errors(host, "the run", token), contextlib.redirect_stdout(printed):
            result = client.create_run_from_pipeline_package(
                str(package), arguments=parameters, run_name=run_name, experiment_name=experiment,
                namespace=namespace, pipeline_root=pipeline_root, enable_caching=enable_caching,
                service_account=service_account)
    for line in printed.getvalue().splitlines():
        log.debug("kfp: %s", _scrub(line, token))
    run = ClusterRun(client, result.run_info, host=host,
                     ui_host=ui_host or os.environ.get(KFP_UI_ENV) or host, pipeline_spec=spec)
    log.info("submitted run %s (%s) to %s: %s", run.id, run_name, host, run.url)
    return run


# --- the run ---------------------------------------------------------------------------------

class ClusterRun:
    """A pipeline run on a KFP cluster: id, url, status, per-task status, metric references."""

    def __init__(self, client: Any, info: Any, *, host: str, ui_host: str | None = None,
                 pipeline_spec: dict | None = None) -> None:
        self._client = client
        self._info = info
        self._spec = pipeline_spec or {}
        self.host = host
        self.id: str = info.run_id
        self.name: str | None = info.display_name
        self.experiment_id: str | None = info.experiment_id
        self.url = f"{(ui_host or host).rstrip('/')}/#/runs/details/{self.id}"

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
        details = getattr(self._info.run_details, "task_details", None) or []
        out: dict[str, TaskStatus] = {}
        for t in details:
            name = t.display_name or t.task_id or "?"
            out[name] = TaskStatus(
                name=name, status=_TASK_STATUS.get(t.state, "running"), state=t.state,
                started=t.start_time, finished=t.end_time,
                error=t.error.message if t.error is not None and t.error.message else None,
                task_id=t.task_id, pod_name=t.pod_name)
        return out

    @property
    def metrics(self) -> dict[str, MetricsRef]:
        """``task.output`` -> :class:`MetricsRef` for each metrics-typed output in the pipeline.

        The v2beta1 API exposes only ML Metadata artifact ids for task outputs, never metric
        values, so ``value`` is always None here; read values from ML Metadata with those ids.
        """
        details = {t.display_name: t for t in
                   (getattr(self._info.run_details, "task_details", None) or [])}
        components = self._spec.get("components", {})
        refs: dict[str, MetricsRef] = {}
        for task, task_spec in self._spec.get("root", {}).get("dag", {}).get("tasks", {}).items():
            comp = components.get(task_spec.get("componentRef", {}).get("name", ""), {})
            arts = comp.get("outputDefinitions", {}).get("artifacts", {})
            for output, art in sorted(arts.items()):
                kind = art.get("artifactType", {}).get("schemaTitle", "")
                if kind not in _METRIC_TYPES:
                    continue
                outputs = getattr(details.get(task), "outputs", None) or {}
                ids = tuple(getattr(outputs.get(output), "artifact_ids", None) or ())
                refs[f"{task}.{output}"] = MetricsRef(task, output, kind, ids)
        return refs

    @property
    def plugin_outputs(self) -> dict[str, dict[str, Any]]:
        """Plugin name -> {entry: value} from ``plugins_output`` (values plugins choose to publish)."""
        out: dict[str, dict[str, Any]] = {}
        for plugin, po in (self._info.plugins_output or {}).items():
            out[plugin] = {k: getattr(v, "value", None) for k, v in (po.entries or {}).items()}
        return out

    # polling -------------------------------------------------------------------------------
    def refresh(self) -> "ClusterRun":
        """Fetch the run again (``GET /apis/v2beta1/runs/{id}``)."""
        with _api_errors(self.host, f"reading run {self.id}", None):
            self._info = self._client.get_run(self.id)
        return self

    def wait(self, timeout: float | None = None, poll_interval: float = 5.0,
             on_update: Callable[["ClusterRun"], None] | None = None) -> "ClusterRun":
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
        """Not available: the v2beta1 API serves no task logs (the KFP UI reads them from the pods)."""
        if step not in self.tasks and step not in self._spec.get("root", {}).get("dag", {}).get("tasks", {}):
            raise ClusterError(f"run {self.id} has no step {step!r}")
        raise ClusterError(f"logs of step {step!r} are not served by the KFP v2beta1 API; open {self.url}")

    # display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"ClusterRun(id={self.id!r}, status={self.status!r}, url={self.url!r})"

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(t.name)}</td><td>{esc(t.status)}</td>"
            f"<td>{'' if t.duration is None else f'{t.duration:.1f} s'}</td></tr>"
            for t in self.tasks.values())
        table = (f"<table><tr><th>task</th><th>status</th><th>time</th></tr>{rows}</table>"
                 if rows else "")
        err = f"<div>error: {esc(self.error)}</div>" if self.status == "failed" and self.error else ""
        return (f"<div><b>KFP run</b> <code>{esc(self.id)}</code> &mdash; <b>{esc(self.status)}</b> "
                f"&mdash; <a href=\"{esc(self.url)}\" target=\"_blank\">{esc(self.url)}</a>{err}{table}</div>")
