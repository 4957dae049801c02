"""``nbmagic tune NOTEBOOK --param ... --max-trials N``: %katib from a terminal or a scheduled job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``tune`` subcommand (arguments as for ``%katib``)."""
    tune = sub.add_parser("tune", help="tune a saved notebook's pipeline: a line per trial, the best at the end")
    tune.add_argument("notebook")
    tune.add_argument("--param", action="append", default=[], metavar="NAME=TYPE(...)", required=True)
    tune.add_argument("--fixed", action="append", default=[], metavar="NAME=VALUE")
    tune.add_argument("--objective", help="the metric to optimise (default: the first recorded metric)")
    tune.add_argument("--goal", choices=["minimize", "maximize"])
    tune.add_argument("--metrics", help="additional metrics to collect, comma-separated")
    tune.add_argument("--algorithm", default="tpe")
    tune.add_argument("--max-trials", type=int, default=12)
    tune.add_argument("--parallel", type=int, default=1, help="trials at once")
    tune.add_argument("--max-failed", type=int, default=3)
    tune.add_argument("--seed", type=int)
    tune.add_argument("--name", help="experiment name (default: pipeline name + a hash of the search space)")
    tune.add_argument("--early-stopping", choices=["medianstop"])
    tune.add_argument("--min-trials", type=int, default=3, help="medianstop: finished trials before any is stopped")
    tune.add_argument("--start-step", type=int, default=4, help="medianstop: values reported before a trial can stop")
    tune.add_argument("--restart", action="store_true", help="forget the stored study of this experiment")
    tune.add_argument("--no-cache", action="store_true", help="run every step in every trial")
    tune.add_argument("--host", help="KFP API URL: a Katib Experiment on that cluster")
    tune.add_argument("--namespace", help="Kubernetes namespace (cluster)")
    tune.add_argument("--image", help="trial Job image (cluster)")
    tune.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from .api import Pipeline, enter_notebook_folder
    from .tune.start import spec_from_args, start_from_args
    from .tune.view import TerminalView

    pipeline = Pipeline.from_notebook(args.notebook)
    plan = pipeline.plan
    spec = spec_from_args(plan, args)
    if not args.host:
        enter_notebook_folder(Path(args.notebook))
    experiment = start_from_args(plan, spec, args)
    kept = getattr(experiment, "resumed", 0)  # local: finished trials read back from the stored study
    kept = kept if isinstance(kept, int) and not isinstance(kept, bool) else 0
    print(
        f"[{experiment.name}] {experiment.backend} experiment started: {spec.max_trials} trials, "
        f"{spec.parallel_trials} at once" + (f"; {kept} kept from before" if kept else ""),
        flush=True,
    )
    if experiment.note:
        print(f"[{experiment.name}] {experiment.note}", flush=True)
    view = TerminalView(experiment).attach()
    try:
        experiment.wait()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (the command's handler raises it)
        print(f"[{experiment.name}] stopping: running trials end, finished ones are kept", file=sys.stderr)
        experiment.stop(wait=True)
        view.update(experiment)
        return 143 if getattr(exc, "reason", "").startswith("terminated") else 130
    view.update(experiment)
    return 1 if experiment.status == "failed" else 0
