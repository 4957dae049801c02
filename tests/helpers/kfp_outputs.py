"""Metric values out of a kfp.local run's outputs (to compare with nbmagic's own runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nbmagic.compile.generate import metrics_output_name
from nbmagic.pipeline.model import PipelinePlan


def metrics_from_outputs(plan: PipelinePlan, outputs: Mapping[str, Any] | Any) -> dict[str, Any]:
    """Metric name -> value from a pipeline run's outputs (kfp.local's task ``.outputs``: ``Metrics`` artifacts).

    kfp.local hands integers back as floats; whole floats of metrics that are ints in the notebook cannot be told
    apart here, so values are returned as stored.
    """
    found: dict[str, Any] = {}
    outputs = getattr(outputs, "outputs", outputs)
    for step in plan.steps:
        if not step.metrics:
            continue
        artifact = outputs[metrics_output_name(step.name)]
        metadata = getattr(artifact, "metadata", artifact)
        for name in step.metrics:
            found[name] = metadata[name]
    return found
