"""Start a tuning experiment of a pipeline: its spec, its identity (the steps' code), the backend, the store entry."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .experiment import Experiment
from .space import ExperimentSpec


def build_spec(
    plan: Any,
    params: Iterable[str],
    *,
    fixed: Iterable[str] = (),
    objective: str | None = None,
    goal: str | None = None,
    metrics: str | Iterable[str] | None = None,
    algorithm: str = "tpe",
    max_trials: int = 12,
    parallel: int = 1,
    max_failed: int = 3,
    seed: int | None = None,
    name: str | None = None,
    early_stopping: str | None = None,
    min_trials: int = 3,
    start_step: int = 4,
) -> ExperimentSpec:
    """The ExperimentSpec from ``NAME=TYPE(...)`` texts (``%katib --param``); the form builds the same object."""
    from .space import guess_goal, parse_fixed, parse_param

    objective = objective or (plan.metrics[0] if plan.metrics else "")
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    return ExperimentSpec(
        parameters=tuple(parse_param(p) for p in params),
        objective=objective,
        goal=goal or guess_goal(objective),
        fixed=dict(parse_fixed(f) for f in fixed),
        additional_metrics=tuple(m.strip() for m in (metrics or ()) if m.strip()),
        algorithm=algorithm,
        max_trials=max_trials,
        parallel_trials=parallel,
        max_failed_trials=max_failed,
        seed=seed,
        name=name or "",
        early_stopping=early_stopping,
        min_trials=min_trials,
        start_step=start_step,
    )


def code_hashes(plan: Any) -> dict[str, str]:
    """Each step's code hash: part of the experiment's identity (changed code starts a new study)."""
    from ..store.lineage import code_hash

    return {step.name: code_hash(step.cell.code, step.prelude) for step in plan.steps}


def start(
    plan: Any,
    spec: ExperimentSpec,
    *,
    defaults: Any = None,
    restart: bool = False,
    cache: bool = True,
    host: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    kfp_experiment: str | None = None,
    service_account: str | None = None,
    api_server: str | None = None,
) -> Experiment:
    """Start tuning ``plan``: Optuna trials on this machine, or a Katib Experiment on the cluster at ``host``.

    ``defaults`` are the pipeline-wide settings merged under each step's own. A local experiment is noted in
    the store (objective and goal) so that ``%restore best`` ranks its trials.
    """
    from ..pipeline.settings import merged_plan
    from .local import code_key

    spec = spec.check_against(plan.parameters, plan.metrics)
    merged = merged_plan(plan, defaults) if defaults is not None else plan
    hashes = code_hashes(merged)
    code = code_key(hashes)
    if host:
        from ..compile.kfp import compile_pipeline
        from ..kube import default_namespace
        from . import katib

        text = compile_pipeline(plan, defaults=defaults) if defaults is not None else compile_pipeline(plan)
        return katib.run_katib(
            spec,
            text,
            host=host,
            pipeline_name=plan.name,
            namespace=default_namespace(namespace),
            recorded=plan.parameters,
            image=image or plan.image,
            kfp_experiment=kfp_experiment,
            service_account=service_account,
            client=katib.api_client(api_server),
            code=code,
            store=(defaults.store if defaults is not None else None) or _configured_store(),
            store_secret=defaults.store_secret if defaults is not None else None,
        )
    from ..store.runs import RunStore
    from .local import LocalExperiment, pipeline_trial_runner

    name = spec.experiment_name(plan.name, code)
    since = {"since": time.time()} if restart else {}  # `%restore best` forgets older trials
    runner = pipeline_trial_runner(merged, cache=cache, experiment=name)
    experiment = LocalExperiment(
        spec, runner, pipeline=plan.name, recorded=plan.parameters, restart=restart, code=hashes
    )
    experiment.start()
    RunStore().set_experiment(name, spec.objective, spec.goal, **since)  # what `%restore best` ranks by
    return experiment


def _configured_store() -> str | None:
    from ..store_uri import configured

    uri = configured()
    return str(uri) if uri else None


def spec_from_args(plan: Any, args: Any) -> ExperimentSpec:
    """The ExperimentSpec from parsed ``%katib`` / ``nbmagic tune`` arguments (the form builds the same object)."""
    return build_spec(
        plan,
        args.param,
        fixed=args.fixed,
        objective=args.objective,
        goal=args.goal,
        metrics=args.metrics,
        algorithm=args.algorithm,
        max_trials=args.max_trials,
        parallel=args.parallel,
        max_failed=args.max_failed,
        seed=args.seed,
        name=args.name,
        early_stopping=args.early_stopping,
        min_trials=args.min_trials,
        start_step=args.start_step,
    )


def start_from_args(plan: Any, spec: ExperimentSpec, args: Any) -> Experiment:
    """Start ``spec`` with the backend options of parsed ``%katib`` / ``nbmagic tune`` arguments."""
    return start(
        plan,
        spec,
        defaults=plan.defaults,
        restart=args.restart,
        cache=not args.no_cache,
        host=args.host,
        namespace=args.namespace,
        image=args.image,
        kfp_experiment=getattr(args, "kfp_experiment", None),
        service_account=getattr(args, "service_account", None),
        api_server=getattr(args, "api_server", None),
    )
