"""What a compiled pipeline's ``--inputs`` files mean on a cluster: the pods must see them."""

from __future__ import annotations

from ..pipeline.model import PipelinePlan
from ..pipeline.settings import merge


def cluster_inputs_note(plan: PipelinePlan) -> str | None:
    """One line naming the steps whose ``--inputs`` files a cluster's pods must find at the same path, or None."""
    declared = [
        f"{step.name} ({', '.join(files)})"
        for step in plan.steps
        if (files := tuple(merge(plan.defaults, step.settings).inputs or ()))
    ]
    if not declared:
        return None
    return (
        f"nbmagic: --inputs files are read where each step runs: {'; '.join(declared)}. A cluster's pods find them "
        "only in the image or on a --volume at that path, a relative path resolving against the pod's working "
        "folder (/ in python:3.x images, /opt/nbmagic in nbmagic's), not the notebook's. Each file's hash (taken "
        "now) is compiled into the step, so it is part of KFP's cache key; a step that runs stops if its file is "
        "missing or differs, but a KFP cache hit runs nothing and checks nothing"
    )
