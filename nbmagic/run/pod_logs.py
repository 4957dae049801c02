"""Pod logs of a KFP run through the Kubernetes core API: where the pods are, reading them, metric lines.

The v2beta1 REST API returns no metric values, so the compiled component prints one line per metric::

    nbmagic-metric {"step": "evaluate", "name": "accuracy", "value": 0.93}

and they are read back from the step's pod log (``read_namespaced_pod_log``, container ``main``: where Argo
runs the component). Kubernetes access (first wins): ``k8s_host=`` / ``$NBMAGIC_K8S_HOST`` (a plain URL such as
a ``kubectl proxy``), in-cluster service account, ``$KUBECONFIG`` / ``~/.kube/config``. Namespace of the run's
pods: ``k8s_namespace=``, ``$NBMAGIC_K8S_NAMESPACE``, the run's ``namespace`` (multi-user KFP), the in-cluster
namespace file, the kubeconfig context's namespace, else ``kubeflow`` (standalone KFP).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import NbMagicError
from ..k8s_names import is_label
from .kfp_client import ClusterError

K8S_HOST_ENV = "NBMAGIC_K8S_HOST"
K8S_NAMESPACE_ENV = "NBMAGIC_K8S_NAMESPACE"
RUN_ID_LABEL = "pipeline/runid"  # KFP labels every pod of a run with it


class ClusterLogsError(ClusterError):
    """The metric lines could not be read from the run's pod logs (access, pod gone, no lines)."""


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


def resolve_k8s_namespace(k8s_namespace: str | None = None, run_namespace: str | None = None) -> str:
    """Where the run's pods are (see module doc for the order), validated as a Kubernetes name."""
    from ..kube import KFP_NAMESPACE, current_namespace

    value = k8s_namespace or os.environ.get(K8S_NAMESPACE_ENV) or run_namespace
    value = value or current_namespace() or KFP_NAMESPACE
    if not is_label(value):
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


def pod_is_task(pod: Any, names: tuple[str, ...], node_ids: set[str]) -> bool:
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


class PodLogs:
    """The pods of one run, read through the Kubernetes core API; a failure is one ClusterLogsError line."""

    def __init__(self, run_id: str, k8s_host: str | None, hide: Callable[[str], str]) -> None:
        self.run_id = run_id
        self.k8s_host = k8s_host
        self._hide = hide  # masks the KFP token, held in a closure rather than an attribute
        self._core: Any = None

    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(kubernetes_client(self.k8s_host))
        return self._core

    def secret_free(self, text: str) -> str:
        text = self._hide(text)
        keys = getattr(getattr(getattr(self._core, "api_client", None), "configuration", None), "api_key", None)
        for value in (keys or {}).values():
            for secret in {str(value), str(value).split(" ")[-1]}:
                if len(secret) >= 8:
                    text = text.replace(secret, "***")
        return text

    def call(self, what: str, call: Callable[[], Any], namespace: str) -> Any:
        """Run one Kubernetes API call; None on 404, one-line ClusterLogsError on anything else."""
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - sorted out by _k8s_failure
            return self.failure(what, err, namespace)

    def failure(self, what: str, err: Exception, namespace: str) -> None:
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
                self.secret_free(
                    f"cannot read the pod logs of run {self.run_id}: {what} in namespace {namespace} refused: "
                    f"{_k8s_detail(err)}{hint}"
                )
            ) from None
        if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
            reason = re.sub(r"^(\w+\([^)]*\)|<[^>]*>):\s*", "", str(getattr(err, "reason", None) or err))
            host = getattr(getattr(self._core.api_client, "configuration", None), "host", "?")
            raise ClusterLogsError(
                self.secret_free(
                    f"cannot read the pod logs of run {self.run_id}: cannot reach the Kubernetes API at {host} "
                    f"({what}): {reason}"
                )
            ) from None
        raise err

    def read(self, namespace: str, pod: str, since_seconds: int | None = None) -> str | None:
        """The log of a pod's ``main`` container (Argo's), or of its only container; None if no such pod.
        ``since_seconds``: only the lines written in that many last seconds."""
        from kubernetes.client.rest import ApiException

        core = self.core()
        for container in ("main", None):
            try:
                # preload off: the client would otherwise json-parse a log that happens to be valid JSON
                since = {"since_seconds": since_seconds} if since_seconds else {}
                response = core.read_namespaced_pod_log(
                    pod, namespace, container=container, _preload_content=False, _request_timeout=(10, 120), **since
                )
                return response.data.decode("utf-8", "replace")
            except ApiException as err:
                if err.status == 400 and container is not None:
                    continue  # no container "main": not an Argo pod, ask for its only container
                return self.failure(f"reading the log of pod {pod}", err, namespace)
            except Exception as err:  # noqa: BLE001 - connection errors: one line
                return self.failure(f"reading the log of pod {pod}", err, namespace)
        return None

    def run_pods(self, namespace: str) -> list[Any]:
        core = self.core()
        listed = self.call(
            "listing the run's pods",
            lambda: core.list_namespaced_pod(
                namespace, label_selector=f"{RUN_ID_LABEL}={self.run_id}", _request_timeout=(10, 60)
            ),
            namespace,
        )
        return list(getattr(listed, "items", None) or [])
