"""%katib: tune the recorded pipeline — a form in notebooks, or every field as an argument."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..arguments import parse
from ..errors import ExperimentInterrupted
from ..kube import PROFILE_NAMESPACE
from .common import headless, in_notebook, usage_errors

SYNTAX = """\
Search space, one --param per tuned parameter:
  lr=double(1e-4,1e-1,log)       continuous, log scale (min > 0)
  lr=double(0.01,0.1,step=0.01)  quantized (grid needs a step for doubles)
  epochs=int(5,50)               integers (optional step=N, log)
  kind=categorical(mlp,gbm)      values (quote values holding commas)
  units=discrete(32,64,128)      numbers
Parameters not given keep their recorded defaults; --fixed name=value overrides one.
Without --param, a form pre-filled from %%pipeline_parameters and %pipeline_metrics is shown.
Examples:
  exp = %katib --algorithm tpe --max-trials 30 --parallel 2 --objective val_loss --param "lr=double(1e-4,1e-1,log)"
  exp.best, exp.trials, exp.wait(), exp.stop()
  exp = %katib --watch NAME      follow an experiment another kernel drives (read-only); %katib --list lists them
Ctrl-C while --wait (or exp.wait()) blocks stops the running trials, then fails the cell (Run All stops there);
the one line names the experiment: the same %katib resumes its study, sys.last_value.experiment is the
stopped Experiment.
"""


@magics_class
class TuneMagics(Magics):
    """Hyperparameter tuning of the recorded pipeline, locally with Optuna or with Katib on a cluster."""

    @magic_arguments()
    @argument("--param", action="append", default=[], metavar="NAME=TYPE(...)", help="a tuned parameter (see above)")
    @argument("--fixed", action="append", default=[], metavar="NAME=VALUE", help="keep a parameter at this value")
    @argument("--objective", help="the metric to optimise (default: the first recorded metric)")
    @argument("--goal", choices=["minimize", "maximize"], help="default: guessed from the metric's name")
    @argument("--metrics", help="additional metrics to collect, comma-separated")
    @argument(
        "--algorithm",
        default="tpe",
        help="random, grid, bayesianoptimization, tpe, multivariate-tpe, cmaes, sobol (Katib's names)",
    )
    @argument("--max-trials", type=int, default=12)
    @argument("--parallel", type=int, default=1, help="trials at once")
    @argument("--max-failed", type=int, default=3, help="stop after this many failed trials")
    @argument("--seed", type=int, help="sampler seed")
    @argument(
        "--early-stopping",
        choices=["medianstop"],
        help="stop trials whose nbmagic.report() values trail the median of finished trials (Katib's medianstop)",
    )
    @argument("--min-trials", type=int, default=3, help="medianstop: finished trials before any is stopped")
    @argument("--start-step", type=int, default=4, help="medianstop: values a trial reports before it can stop")
    @argument("--name", help="experiment name (default: pipeline name + a hash of the search space)")
    @argument("--restart", action="store_true", help="forget the stored study of this experiment")
    @argument("--no-cache", action="store_true", help="run every step in every trial")
    @argument(
        "--wait", action="store_true", help="block until the experiment ends (always, in nbconvert and papermill runs)"
    )
    @argument("--quiet", action="store_true", help="no live view")
    @argument(
        "--stop",
        action="store_true",
        help="stop this kernel's running local experiments (or the one --name names): running trials end",
    )
    @argument(
        "--watch",
        metavar="NAME",
        help="follow local experiment NAME read-only (another kernel or nbmagic tune drives it)",
    )
    @argument("--list", action="store_true", help="list the store's local experiments and who drives them")
    @argument("--notebook", help="the notebook file, when the kernel cannot find it")
    @argument("--host", help="KFP API URL: run a Katib Experiment on that cluster; trials run the pipeline there")
    @argument("--namespace", default=PROFILE_NAMESPACE, help="Kubernetes namespace (cluster)")
    @argument("--image", help="trial Job image (cluster; needs python, kfp and nbmagic)")
    @argument("--kfp-experiment", help="KFP experiment for the trial runs (cluster)")
    @argument("--service-account", help="trial Job service account (cluster)")
    @argument("--api-server", help="Kubernetes API URL (cluster; default: in-cluster config or kubeconfig)")
    @line_magic("katib")
    @usage_errors
    def katib(self, line: str) -> Any:
        """Tune the recorded pipeline: each trial is a pipeline run; unchanged steps come from the cache."""
        args = parse(self.katib, line)
        if args.stop:
            return _stop(args.name)
        if args.list or args.watch:
            return self._watch(args, _options(self.katib, line))
        from .state import current_plan

        plan = current_plan(self.shell, args.notebook)
        if not args.param:
            return self._form(plan, args)
        return self._start(plan, args, build_spec(args, plan))

    def _watch(self, args: Any, given: list[str]) -> Any:
        from IPython.core.error import UsageError

        from ..tune.watch import list_experiments, watch

        if args.list and args.watch:
            raise UsageError("%katib --watch NAME and --list take no search space, --host or --restart")
        extra = [option for option in given if option not in WATCH_OPTIONS]
        if extra:
            raise UsageError(
                f"%katib --watch NAME and --list take no search space or tuning options: {', '.join(extra)} given"
            )
        if args.list:
            return list_experiments()
        experiment = watch(args.watch)
        show(experiment, self.shell, quiet=args.quiet)
        if args.wait:  # never implied: a watch started by nbconvert or papermill reads what is there
            experiment.wait()
        return experiment

    def _form(self, plan: Any, args: Any) -> Any:
        from ..tune.form import TuneForm
        from ..tune.space import TuneError, spec_from_recorded

        if not plan.parameters:
            raise TuneError("no pipeline parameters recorded: mark them with %%pipeline_parameters first")
        if not plan.metrics:
            raise TuneError("no pipeline metrics recorded: mark one with %pipeline_metrics NAME first")
        defaults = spec_from_recorded(plan.parameters, plan.metrics)
        overrides = {
            k: v
            for k, v in {
                "algorithm": args.algorithm,
                "max_trials": args.max_trials,
                "parallel_trials": args.parallel,
                "max_failed_trials": args.max_failed,
                "objective": args.objective,
                "goal": args.goal,
                "early_stopping": args.early_stopping,
                "min_trials": args.min_trials,
                "start_step": args.start_step,
            }.items()
            if v is not None
        }
        from dataclasses import replace

        defaults = replace(defaults, **overrides)
        holder: dict[str, Any] = {}

        def on_run(spec: Any) -> Any:
            from dataclasses import replace as copy

            spec = copy(spec, seed=args.seed, name=args.name or "")
            return self._start(plan, args, spec, target=holder["form"].view)

        form = TuneForm(plan.parameters, plan.metrics, on_run, defaults=defaults)
        holder["form"] = form
        if not in_notebook():  # a terminal cannot show the form: the same settings as a command line
            print(form.command_line())
            return None
        form.show()
        return FormHandle(form, self.shell)

    def _start(self, plan: Any, args: Any, spec: Any, target: Any = None) -> Any:
        from ..tune.start import start_from_args

        experiment = start_from_args(plan, spec, args)
        view = show(experiment, self.shell, quiet=args.quiet, target=target)
        if args.wait or (target is None and headless()):  # nbconvert/papermill stop the kernel after the last cell
            try:
                experiment.wait()  # Ctrl-C: the experiment is stopped (running trials end) before it re-raises
            except KeyboardInterrupt:
                if view is not None:
                    view.refresh()
                # the cell fails so Run All stops; the experiment stays reachable from the exception
                raise ExperimentInterrupted(
                    experiment, f"{_stopped_line(experiment)} (or: exp = sys.last_value.experiment)"
                ) from None
            if view is not None:
                view.refresh()  # the final state, published while this cell still runs (and is saved)
        return experiment

    katib.__doc__ = (katib.__doc__ or "") + "\n\n" + SYNTAX


def _stopped_line(experiment: Any) -> str:
    counts = {s: sum(t.status == s for t in experiment.trials) for s in ("succeeded", "stopped")}
    return (
        f"experiment {experiment.name!r} {experiment.status}: {counts['succeeded']} trials finished, "
        f"{counts['stopped']} running ones stopped; the same %katib resumes it"
    )


def _stop(name: str | None) -> None:
    """``%katib --stop``: stop this kernel's running local experiments and say which."""
    from ..tune.local import stop_running

    stopped = stop_running(name)
    if not stopped:
        print("nbmagic: no local experiment is running in this kernel" + (f" named {name!r}" if name else ""))
    for experiment in stopped:
        print(f"nbmagic: {_stopped_line(experiment)}")


def build_spec(args: Any, plan: Any) -> Any:
    """The ExperimentSpec from parsed %katib arguments (the form builds the same object)."""
    from ..tune.start import spec_from_args

    return spec_from_args(plan, args)


def show(experiment: Any, shell: Any, *, quiet: bool = False, target: Any = None) -> Any:
    """Attach the live view (HTML in notebooks; in a terminal, a line per finished trial and the summary)."""
    from ..tune.view import LiveView

    experiment._shown_in = getattr(shell, "execution_count", None)
    if quiet:
        return None
    if target is not None:
        return LiveView(experiment, target=target).show()
    if in_notebook():
        return LiveView(experiment).show()
    else:
        driver = getattr(experiment, "driver", None)  # a watched experiment: someone else drives it
        print(
            f"nbmagic: watching {experiment.backend} experiment {experiment.name!r} read-only, driven by {driver}; "
            "exp.wait() blocks until it ends, exp.best shows the best trial"
            if driver is not None
            else f"nbmagic: {experiment.backend} experiment {experiment.name!r} started "
            f"({experiment.spec.max_trials} trials, {experiment.spec.parallel_trials} at once); "
            "exp.wait() blocks, exp.best shows the best trial"
        )
        if experiment.note:
            print(f"nbmagic: {experiment.note}")
        from ..tune.view import TerminalView

        TerminalView(experiment).attach().update(experiment)
    return None


class FormHandle:
    """What ``exp = %katib`` returns when the form is shown: the form, then the experiment it started."""

    def __init__(self, form: Any, shell: Any) -> None:
        self.form = form
        self._shown_in = getattr(shell, "execution_count", None)

    @property
    def experiment(self) -> Any:
        return self.form._current()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.form._current(), name)

    def _ipython_display_(self) -> None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and getattr(shell, "execution_count", None) == self._shown_in:
            return  # already displayed by %katib in this cell
        self.form.show()

    def __repr__(self) -> str:
        return f"<%katib form; experiment: {self.form.experiment!r}>"


WATCH_OPTIONS = ("--watch", "--list", "--quiet", "--wait")


def _options(magic: Any, line: str) -> list[str]:
    """The options written on ``line`` (abbreviations resolved as argparse resolves them), in order."""
    from ..arguments import split

    parser = magic.parser
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    found: list[str] = []
    for word in split(line, parser.prog):
        if not word.startswith("--"):
            continue
        flag = word.split("=", 1)[0]
        matches = [flag] if flag in known else [option for option in known if option.startswith(flag)]
        if len(matches) == 1 and matches[0] not in found:
            found.append(matches[0])
    return found
