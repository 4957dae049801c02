"""How big a compiled pipeline is, against what a Kubernetes cluster stores in one object.

On Kubeflow Pipelines every task's component spec ends up in the Argo Workflow object made from the YAML, and the
API server refuses objects over etcd's request limit (1.5 MiB by default; the Workflow is larger than the YAML).
"""

from __future__ import annotations

OBJECT_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes
WARN_AT = 1024 * 1024  # the Workflow adds driver templates and escaping on top of the YAML: warn with room left


def human(size: int) -> str:
    """``312 KB``, ``1.2 MB`` (decimal units, as the size is printed to a person)."""
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{max(size, 1) / 1e3:.0f} KB"


def size_warning(size: int, steps: int, name: str = "the pipeline") -> str | None:
    """One line when ``size`` bytes of YAML for ``steps`` steps come near the cluster's object limit, else None."""
    if size < WARN_AT:
        return None
    return (
        f"warning: {name} is {human(size)} for {steps} steps, near the ~{human(OBJECT_LIMIT)} a cluster stores in one "
        "object (the Argo Workflow KFP makes from it is larger): a cluster may refuse it. Compile with --image "
        "(steps in nbmagic's cluster image carry no runtime and install nothing nbmagic needs), or make fewer steps"
    )
