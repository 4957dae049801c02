"""How big a compiled pipeline is, against what a Kubernetes cluster stores in one object.

On Kubeflow Pipelines every task's component spec ends up in the Argo Workflow object made from the YAML, and the
API server refuses objects over etcd's request limit (1.5 MiB by default; the Workflow is larger than the YAML).
While a run goes on, KFP's driver also writes each task's executor input (its parameter values, so the
``nbmagic_runtime`` parameter too) into that task's pod spec patch, which Argo keeps in the Workflow's status.
"""

from __future__ import annotations

from ..units import format_size

OBJECT_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes
WARN_AT = 1024 * 1024  # the Workflow adds driver templates and escaping on top of the YAML: warn with room left


def size_warning(size: int, steps: int, name: str = "the pipeline", runtime: int = 0) -> str | None:
    """One line when ``size`` bytes of YAML for ``steps`` steps come near the cluster's object limit, else None.

    ``runtime``: bytes of the ``nbmagic_runtime`` parameter each step's executor input carries (0 without it).
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
    if steps * runtime >= WARN_AT:
        return (
            f"warning: {name} passes nbmagic's runtime ({format_size(runtime)}) to each of its {steps} steps, and KFP keeps "
            f"every step's inputs in the run's Argo Workflow: ~{format_size(steps * runtime)} by the end of a run, near the "
            f"~{format_size(OBJECT_LIMIT)} a cluster stores in one object. {fix}"
        )
    return None
