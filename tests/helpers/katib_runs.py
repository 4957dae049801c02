"""A Katib Experiment started through ``run_katib`` against the fake Kubernetes API of ``helpers.fake_katib_api``."""

from __future__ import annotations

from typing import Any


def start_katib(
    api: Any,
    spec: Any,
    recorded: dict,
    package: str = "pipelineSpec: {}\n",
    *,
    host: str = "h",
    pipeline_name: str = "p",
    namespace: str = "ns",
    poll: float = 0.01,
    **kw: Any,
) -> Any:
    """``run_katib`` of ``spec`` with the pipeline ``package``, its client talking to the fake API server ``api``."""
    from nbmagic.tune.katib import api_client, run_katib

    return run_katib(
        spec,
        package,
        host=host,
        pipeline_name=pipeline_name,
        namespace=namespace,
        recorded=recorded,
        client=api_client(api.url),
        poll=poll,
        **kw,
    )
