"""How big a compiled pipeline is, against what a Kubernetes cluster stores in one object.

On Kubeflow Pipelines every task's component spec ends up in the Argo Workflow object made from the YAML, and the
API server refuses objects over etcd's request limit (1.5 MiB by default; the Workflow is larger than the YAML).
While a run goes on, Argo also records each task's inputs and the pod spec KFP's driver made for it (see
``workflow``): the warning weighs that estimate too.
"""

from __future__ import annotations

from ..units import format_size
from .workflow import ARGO_LIMIT

OBJECT_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes
WARN_AT = 1024 * 1024  # the Workflow adds driver templates and escaping on top of the YAML: warn with room left
WORKFLOW_WARN_AT = ARGO_LIMIT * 3 // 4  # the run's Workflow, status gzipped: warn with a quarter of Argo's limit left


def size_warning(size: int, steps: int, name: str = "the pipeline", workflow: int = 0) -> str | None:
    """One line when ``size`` bytes of YAML for ``steps`` steps come near the cluster's object limit, else None.

    ``workflow``: the estimated bytes of the run's Argo Workflow by its end, its node status gzipped as Argo stores
    it when the object is large (``workflow.estimate(...).least``).
    """
    fix = (
        "Compile with --image (steps in nbmagic's cluster image carry no runtime and install nothing nbmagic needs), "
        "or make fewer steps"
    )
    if size >= WARN_AT:
        return (
            f"warning: {name} is {format_size(size)} for {steps} steps, near the ~{format_size(OBJECT_LIMIT)} a cluster stores "
            f"in one object (the Argo Workflow KFP makes from it is larger): a cluster may refuse it. {fix}"
        )
    if workflow >= WORKFLOW_WARN_AT:
        return (
            f"warning: a run of {name} ({steps} steps) grows the Argo Workflow KFP makes from it to ~{format_size(workflow)} "
            f"even with its status gzipped (every step's inputs and pod spec are kept in it), near the "
            f"~{format_size(ARGO_LIMIT)} Argo stores in one object. {fix}"
        )
    return None
