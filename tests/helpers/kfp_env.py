"""Tests that speak to fake KFP and Kubernetes servers: none of the machine's cluster settings leak in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLUSTER_VARIABLES = (
    "NBMAGIC_KFP_HOST",
    "NBMAGIC_KFP_TOKEN",
    "KF_PIPELINES_ENDPOINT",
    "KF_PIPELINES_UI_ENDPOINT",
    "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
    "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
    "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
    "NBMAGIC_K8S_HOST",
    "NBMAGIC_K8S_NAMESPACE",
    "KUBERNETES_SERVICE_HOST",
)


def isolate_from_cluster(monkeypatch: Any, tmp_path: Path) -> None:
    """No kfp context file, KFP/nbmagic/Kubernetes variable or kubeconfig of the machine is read."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # no real cluster is ever asked
