"""``nbmagic tune NOTEBOOK --param ... --max-trials N``: %katib from a terminal or a scheduled job;
``nbmagic tune --watch NAME`` follows a local experiment another process drives, ``--list`` lists them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``tune`` subcommand (arguments as for ``%katib``)."""
    tune = sub.add_parser("tune", help="tune a saved notebook's pipeline: a line per trial, the best at the end")
    tune.add_argument("notebook", nargs="?")
    tune.add_argument("--param", action="append", default=[], metavar="NAME=TYPE(...)")
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
    tune.add_argument(
        "--watch", metavar="NAME", help="follow local experiment NAME read-only (a kernel or nbmagic tune drives it)"
    )
    tune.add_argument("--list", action="store_true", help="list the store's local experiments and who drives them")
    tune.set_defaults(func=lambda args: cmd_tune(args, tune))


def _given(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The notebook and tuning options set on the command line (those not at their defaults), by name."""
    return [
        action.option_strings[-1] if action.option_strings else action.dest.upper()
        for action in parser._actions
        if action.dest not in ("help", "watch", "list") and getattr(args, action.dest, None) != action.default
    ]


def cmd_tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .errors import NbMagicError

    if args.watch or args.list:
        given = _given(args, parser) + (["--list"] if args.watch and args.list else [])
        if given:
            raise NbMagicError(
                f"tune --watch NAME and --list take no notebook or tuning options: {', '.join(given)} given"
            )
        return cmd_list() if args.list else cmd_watch(args.watch)
    if not args.notebook or not args.param:
        raise NbMagicError('tune needs a NOTEBOOK and --param "NAME=TYPE(...)" (or --watch NAME, or --list)')
    return cmd_start(args)


def cmd_list() -> int:
    from .tune.watch import list_experiments

    print(list_experiments().text())
    return 0


def cmd_watch(name: str) -> int:
    """Follow experiment ``name`` read-only: a line per finished trial, the summary when it ends."""
    from .tune.view import TerminalView
    from .tune.watch import WatchedExperiment

    experiment = WatchedExperiment(name)
    finished = sum(t.status != "running" for t in experiment.trials)
    try:
        print(
            f"[{name}] watching {experiment.backend} experiment read-only, driven by {experiment.driver}: "
            f"{finished} of {experiment.spec.max_trials} trials finished",
            flush=True,
        )
        view = TerminalView(experiment).attach()
        view.update(experiment)
        experiment.wait()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM ends the watch, never the experiment
        experiment.close()
        reason = getattr(exc, "reason", "") or "interrupted"
        print(
            f"[{name}] watch ended ({reason}); the experiment goes on, driven by {experiment.driver}", file=sys.stderr
        )
        return 143 if reason.startswith("terminated") else 130
    view.update(experiment)
    return 1 if experiment.status == "failed" else 0


def cmd_start(args: argparse.Namespace) -> int:
    """Run a study of the notebook's pipeline: a line per trial, the best at the end."""
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
