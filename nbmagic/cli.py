"""The ``nbmagic`` command: the same library as the magics, from a saved notebook, without Jupyter."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import NbMagicError

Command = Callable[[argparse.Namespace], int]


def cmd_run(args: argparse.Namespace) -> int:
    from .api import Pipeline, enter_notebook_folder

    pipeline = Pipeline.from_notebook(args.notebook, args.name)
    values = pipeline.values(args.param)
    enter_notebook_folder(Path(args.notebook))  # --inputs files and local modules are the notebook's neighbours
    if args.host:
        from .compile.inputs import cluster_inputs_note

        note = cluster_inputs_note(pipeline.plan)
        if note:
            print(note)
        run = pipeline.submit(values, host=args.host, experiment=args.experiment, namespace=args.namespace)
        print(f"run {run.id} started: {run.url}")
        return 0
    notes = pipeline.local_notes()
    if notes:
        print("cluster-only settings, not applied locally: " + "; ".join(notes))

    from .run.follow import LogFollower

    follower = LogFollower()
    from .api import store

    runs_store = store()

    def show(run: Any, state: Any) -> None:
        if state is not None and state.status != "pending":
            log = runs_store.run_dir(run.id) / f"{state.name}.log"
            if state.status == "running":
                follower.start(state.name, log)  # the step's prints, live, as [step] lines
            else:
                follower.stop(state.name)
            took = (
                f" ({state.duration:.2f} s)" if state.status not in ("running",) and state.duration is not None else ""
            )
            print(f"[{run.id}] {state.name}: {state.status}{took}", flush=True)

    try:
        run = pipeline.run(values, cache=not args.no_cache, workers=args.workers, listener=None if args.quiet else show)
    finally:
        follower.stop_all()
    metrics = ", ".join(f"{k}={v:.6g}" for k, v in run.metrics.items())
    print(
        f"[{run.id}] {run.status} in {run.duration:.2f} s, {run.cached_steps}/{len(run.steps)} steps cached"
        + (f"; {metrics}" if metrics else "")
    )
    print(f"logs: {runs_store.run_dir(run.id)}")
    if run.status != "done":
        failed = next(s for s in run.steps.values() if s.status in ("failed", "timed_out"))
        print(failed.traceback or failed.error, file=sys.stderr)
        return 1
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .api import Pipeline, enter_notebook_folder
    from .compile.size import size_warning
    from .compile.workflow import estimate
    from .images import nbmagic_image
    from .units import format_size

    image = (args.image or nbmagic_image()) if args.image is not None else None
    pipeline = Pipeline.from_notebook(args.notebook, args.name)
    output = Path(args.output).expanduser().resolve()  # where the command was typed
    enter_notebook_folder(Path(args.notebook))  # --inputs files are hashed beside the notebook, as a run reads them
    path = pipeline.compile(output, image=image)
    from .compile.inputs import cluster_inputs_note

    note = cluster_inputs_note(pipeline.plan)
    if note:
        print(note)
    if path.suffix == ".py":
        print(f"wrote {args.output}")
        return 0
    size = path.stat().st_size
    steps = len(pipeline.plan.steps)
    print(f"wrote {args.output} ({format_size(size)}, {steps} steps)")
    workflow = estimate(path.read_text(encoding="utf-8")).least
    warning = size_warning(size, steps, path.name, workflow)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from .api import runs, runs_options

    result = runs(**runs_options(args), root=args.store)
    if args.json and hasattr(result, "to_records"):
        from .store.history import dumps

        print(dumps(result))
    else:
        print(result.text(max_width=_cell_width()) if hasattr(result, "text") else result)
    return 0


def _cell_width() -> int:
    """How wide a table cell may be: half a terminal's width (at least 48), or whole when not printing to one."""
    import shutil

    if not sys.stdout.isatty():
        return 10_000
    return max(48, shutil.get_terminal_size((160, 24)).columns // 2)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nbmagic")
    except PackageNotFoundError:
        return "unknown"


def cmd_gc(args: argparse.Namespace) -> int:
    from .api import gc, gc_options

    result = gc(**gc_options(args), root=args.store)
    print(result.text() if hasattr(result, "text") else result)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert.kale import convert_kale

    if not args.from_kale:
        raise NbMagicError("convert needs --from-kale KALE.ipynb")
    source = Path(args.from_kale).expanduser()
    if not source.is_file():
        raise NbMagicError(f"no notebook {args.from_kale}")
    for note in convert_kale(source, Path(args.output).expanduser()):
        print(note)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbmagic", description="Notebook pipelines on Kubeflow, local first.")
    parser.add_argument("--version", action="version", version=f"nbmagic {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a saved notebook's pipeline (locally in the notebook's folder, as Jupyter would, or on a KFP cluster with --host)",
    )
    run.add_argument("notebook")
    run.add_argument(
        "--param", action="extend", nargs="+", metavar="NAME=VALUE", help="override pipeline parameters (one or more)"
    )
    run.add_argument("--no-cache", action="store_true", help="run every step, reusing nothing")
    run.add_argument("--workers", type=int, default=None, help="steps run at once (default: cores)")
    run.add_argument("--name", help="pipeline name (default: the notebook's file name)")
    run.add_argument("--host", help="KFP API URL to run on instead of locally")
    run.add_argument("--experiment", help="KFP experiment (cluster runs)")
    run.add_argument("--namespace", help="Kubernetes namespace (cluster runs)")
    run.add_argument("--quiet", action="store_true", help="print only the result")
    run.set_defaults(func=cmd_run)

    comp = sub.add_parser("compile", help="compile a saved notebook's pipeline to KFP IR YAML (or DSL .py)")
    comp.add_argument("notebook")
    comp.add_argument("-o", "--output", required=True, help="FILE.yaml for KFP IR, FILE.py for readable KFP DSL")
    comp.add_argument("--name", help="pipeline name (default: the notebook's file name)")
    comp.add_argument(
        "--image",
        nargs="?",
        const="",
        metavar="IMAGE",
        help="run the steps in nbmagic's cluster image (default $NBMAGIC_IMAGE), whose nbmagic runtime they use",
    )
    comp.set_defaults(func=cmd_compile)

    from .api import GC_ARGUMENTS, RUNS_ARGUMENTS

    runs = sub.add_parser("runs", help="list, filter, sort and compare runs in the store")
    _add(runs, RUNS_ARGUMENTS)
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    runs.add_argument("--store", help="the store folder (default: $NBMAGIC_HOME/store)")
    runs.set_defaults(func=cmd_runs)

    gc = sub.add_parser("gc", help="drop old runs and free values nothing kept refers to")
    _add(gc, GC_ARGUMENTS)
    gc.add_argument("--store", help="the store folder (default: $NBMAGIC_HOME/store)")
    gc.set_defaults(func=cmd_gc)

    logs = sub.add_parser("logs", help="what a step printed in a run (kept here, else from the shared store)")
    logs.add_argument("run", help="a run id, a unique prefix, last, best or best:EXPERIMENT")
    logs.add_argument("step", help="the step's name")
    logs.add_argument("--store", help="the store folder (default: $NBMAGIC_HOME/store)")
    logs.set_defaults(func=cmd_logs)

    conv = sub.add_parser("convert", help="turn a Kale-tagged notebook into an nbmagic notebook")
    conv.add_argument("--from-kale", metavar="KALE.ipynb", help="the Kale notebook (cell tags) to convert")
    conv.add_argument("-o", "--output", required=True, help="the nbmagic notebook to write")
    conv.set_defaults(func=cmd_convert)

    from .tune_cli import add_parser as add_tune

    add_tune(sub)
    return parser


def cmd_logs(args: argparse.Namespace) -> int:
    from .api import logs
    from .store.shared_logs import printable

    # a log may come from another home: its escape and control sequences never reach the terminal
    sys.stdout.write(printable(logs(args.run, args.step, root=args.store)))
    return 0


def _add(parser: argparse.ArgumentParser, specs: list[tuple[tuple[str, ...], dict[str, Any]]]) -> None:
    for names, options in specs:
        parser.add_argument(*names, **options)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_dash_values(parser, words))
    previous = _stop_on_sigterm()
    try:
        return args.func(args)
    except NbMagicError as exc:
        print(f"nbmagic: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the run (if any) is already recorded and its steps ended
        print(f"nbmagic: {_stopped_line(exc)}", file=sys.stderr)
        return 143 if getattr(exc, "reason", "").startswith("terminated") else 130
    except BrokenPipeError as exc:
        if _stdout_gone():  # the reader of our output went away (`| head`): nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        print(f"nbmagic: {exc.strerror or exc}: {exc.filename or 'a pipe the command used'}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _stdout_gone() -> bool:
    """True when our standard output is a pipe nobody reads any more."""
    import select

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        pass
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _stop_on_sigterm() -> Any:
    """SIGTERM ends a command as Ctrl-C does (steps stopped, the run recorded), with its own reason.

    Returns the handler it replaced (to restore), or None outside the main thread, where Python cannot
    install one (``main()`` called from a program's worker thread keeps that program's handling)."""
    import signal
    import threading

    from .errors import Stopped

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(f"terminated ({signal.Signals(signum).name})")

    previous = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if previous is None else previous


def _stopped_line(exc: BaseException) -> str:
    """``interrupted: run ID marked failed after 4.52 s; its steps were stopped`` (or without a run)."""
    reason = getattr(exc, "reason", None) or "interrupted"
    run = getattr(exc, "run", None)
    if run is None:
        return reason
    return f"{reason}: run {run.id} marked {run.status} after {run.duration:.2f} s; its steps were stopped"


def _dash_values(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """``runs --sort -val_loss``: a dash value of a subcommand's option, read as the magics read it."""
    from .arguments import attach_dash_values

    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    chosen = sub.choices.get(words[0]) if sub is not None and words else None
    return words[:1] + attach_dash_values(chosen, words[1:]) if chosen is not None else words


if __name__ == "__main__":
    sys.exit(main())
