"""The Katib trial runner: ``python -m nbmagic.tune.trial --host H --pipeline-package P --type lr=float --param lr=0.01 ...``

Parameters arrive as text and are turned back into their recorded types (``--type``) before the KFP
run starts. After the run, each metric is printed as a ``name=value`` line for Katib's StdOut collector.
The values come from ``ClusterRun.metric_values()``, which reads the lines the pipeline's metric step
printed from its pod log with the Kubernetes API (in the trial Job: the in-cluster service account, which
needs ``get pods/log`` and ``list pods`` in the run's namespace; ``--k8s-namespace`` when the KFP pods run
elsewhere than ``--namespace``, e.g. ``kubeflow`` for a standalone KFP).
Exit status: 0 when the run succeeded and reported the objective, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import NbMagicError
from ..pipeline.model import Parameter

TYPES = ("bool", "int", "float", "str")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nbmagic.tune.trial", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="KFP API endpoint")
    p.add_argument("--pipeline-package", required=True, help="compiled pipeline YAML (path)")
    p.add_argument("--pipeline-name", default="pipeline")
    p.add_argument("--experiment", default=None, help="KFP experiment for the runs")
    p.add_argument("--namespace", default=None)
    p.add_argument("--k8s-namespace", default=None, help="namespace of the run's pods (metric logs)")
    p.add_argument("--k8s-host", default=None, help="Kubernetes API URL (default: in-cluster, kubeconfig)")
    p.add_argument("--type", action="append", default=[], metavar="NAME=TYPE", help="bool|int|float|str")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--metric", action="append", default=[], metavar="NAME", help="metrics to print; the first is the objective"
    )
    p.add_argument("--store", default=None, metavar="URI", help="shared run store: record the trial's run there")
    p.add_argument("--katib-experiment", default=None, help="the Katib Experiment this trial belongs to")
    p.add_argument("--goal", default="minimize", choices=("minimize", "maximize"))
    return p


def record_trial(args: argparse.Namespace, run: Any, parameters: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Tell the shared store which run this trial was (its experiment, objective and metrics): ``%restore best``
    there then ranks it with the experiment's other trials. One line on stderr if the store cannot be reached."""
    from ..store.backends import RemoteError
    from ..store.remote import RemoteStore
    from ..store_uri import parse

    status = str(getattr(run, "status", "") or "done").lower()
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        RemoteStore(parse(args.store)).publish_trial(
            str(getattr(run, "id", "")),
            pipeline=args.pipeline_name,
            experiment=args.katib_experiment or args.pipeline_name,
            properties={"objective": args.metric[0] if args.metric else None, "goal": args.goal},
            parameters=parameters,
            metrics=numbers,
            status="done" if status in ("done", "succeeded") else "failed",
        )
    except (NbMagicError, RemoteError) as exc:
        print(f"nbmagic trial: the run is not recorded in {args.store}: {exc}", file=sys.stderr)


def typed_parameters(types: Sequence[str], params: Sequence[str]) -> dict[str, Any]:
    """``--type``/``--param`` pairs -> {name: typed value}; a parameter without a type stays text."""
    kinds: dict[str, str] = {}
    for item in types:
        name, eq, kind = item.partition("=")
        if not eq or kind not in TYPES:
            raise NbMagicError(f"--type {item!r}: expected NAME=bool|int|float|str")
        kinds[name] = kind
    values: dict[str, Any] = {}
    for item in params:
        name, eq, raw = item.partition("=")
        if not eq:
            raise NbMagicError(f"--param {item!r}: expected NAME=VALUE")
        kind = kinds.get(name, "str")
        values[name] = Parameter(name, raw, kind).coerce(raw)
    return values


def metric_lines(metrics: dict[str, Any], names: Sequence[str]) -> list[str]:
    """``name=value`` lines: the requested metrics first, then any other numeric ones."""
    order = list(names) + sorted(k for k in metrics if k not in names)
    lines = []
    for name in order:
        value = metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars, numeric strings
            except (TypeError, ValueError):
                continue
        if math.isfinite(float(value)):
            lines.append(f"{name}={float(value)!r}")
    return lines


def metric_values(run: Any) -> dict[str, Any]:
    """Metric name -> value from a finished run.

    Plain values are taken as they are; a reference object (``nbmagic.run.cluster.MetricsRef``) counts
    when it carries a ``value`` (a number, or a dict of name -> number for a task's metrics output).
    A run may also offer ``metric_values()``, which wins.
    """
    reader = getattr(run, "metric_values", None)
    raw = reader() if callable(reader) else (getattr(run, "metrics", None) or {})
    found: dict[str, Any] = {}
    for key, value in dict(raw).items():
        value = getattr(value, "value", value)
        if isinstance(value, dict):
            found.update(value)
        elif value is not None:
            found[str(key)] = value
    return found


def _default_submit(*args: Any, **kwargs: Any) -> Any:
    from ..run import cluster

    return cluster.submit(*args, **kwargs)


def main(argv: Sequence[str] | None = None, submit: Callable[..., Any] | None = None) -> int:
    """Run one trial; ``submit`` is ``nbmagic.run.cluster.submit`` unless a test passes another."""
    args = parser().parse_args(argv)
    try:
        parameters = typed_parameters(args.type, args.param)
        pipeline_yaml = Path(args.pipeline_package).read_text()
    except (NbMagicError, OSError) as exc:
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        return 1
    print(f"nbmagic trial: parameters {parameters}", file=sys.stderr)
    where = {k: v for k, v in (("k8s_host", args.k8s_host), ("k8s_namespace", args.k8s_namespace)) if v}
    try:
        run = (submit or _default_submit)(
            pipeline_yaml,
            host=args.host,
            parameters=parameters,
            pipeline_name=args.pipeline_name,
            experiment=args.experiment,
            namespace=args.namespace,
            **where,
        )
        run.wait()
    except NbMagicError as exc:
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        return 1
    status = str(getattr(run, "status", "") or "")
    try:
        metrics = metric_values(run)
    except NbMagicError as exc:  # logs unreadable: say why, print nothing Katib could mistake for metrics
        print(f"nbmagic trial: {exc}", file=sys.stderr)
        metrics = {}
    for line in metric_lines(metrics, args.metric):
        print(line, flush=True)
    if args.store:
        record_trial(args, run, parameters, metrics)
    if status.lower() not in ("", "done", "succeeded"):
        print(f"nbmagic trial: run {getattr(run, 'id', '?')} ended {status}", file=sys.stderr)
        return 1
    if args.metric and args.metric[0] not in metrics:
        print(f"nbmagic trial: metric {args.metric[0]!r} was not reported by the run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
