"""One way to reach the Kubernetes API, for KFP pod logs, Katib Experiments and KServe InferenceServices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import NbMagicError


def api_client(host: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: ``host`` if given, else in-cluster config, else the kubeconfig.

    Each call builds its own Configuration (the kubernetes package's global default is left alone), and
    ``$KUBECONFIG`` is read at call time. No configuration at all is a one-line NbMagicError.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if host:
        configuration.host = host
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
        except Exception as exc:  # noqa: BLE001 - kubeconfig problems come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NbMagicError(f"no Kubernetes access (not in a cluster, kubeconfig: {first})") from None
    return client.ApiClient(configuration)


# Default namespaces, each where Kubeflow puts that kind of object unless told otherwise
PROFILE_NAMESPACE = "kubeflow-user-example-com"  # Kubeflow's example user profile: Katib Experiments
SERVING_NAMESPACE = "default"  # KServe InferenceServices
KFP_NAMESPACE = "kubeflow"  # standalone Kubeflow Pipelines: the runs' pods
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace(explicit: str | None = None) -> str:
    """The namespace of a user's Kubeflow resources (Katib Experiments): ``explicit``, else the profile's."""
    return explicit or PROFILE_NAMESPACE


def current_namespace() -> str | None:
    """The namespace this process works in: the pod's own in a cluster, else the kubeconfig context's (or None)."""
    try:
        found = Path(IN_CLUSTER_NAMESPACE_FILE).read_text().strip()
    except OSError:
        found = ""
    if found:
        return found
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        return (active or {}).get("context", {}).get("namespace") or None
    except Exception:  # noqa: BLE001 - no kubeconfig: no namespace from it
        return None
