"""The ``nbmagic`` command: the same library as the magics, from a saved notebook, without Jupyter."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import NbMagicError

Command = Callable[[argparse.Namespace], int]


def _plan(notebook: str, name: str | None = None):  # noqa: ANN202
    from .pipeline.cells import read_cells
    from .pipeline.notebook import read_notebook
    from .pipeline.plan import build_plan

    path = Path(notebook).expanduser()
    if not path.is_file():
        raise NbMagicError(f"no notebook {notebook}")
    cells = read_notebook(path)
    recorded = read_cells(cells)
    for warning in recorded.warnings:
        print(f"nbmagic: warning: {warning}")
    plan = build_plan(recorded, notebook_path=str(path.resolve()), name=name)
    return plan, plan.defaults


def _enter_notebook_folder(notebook: Path) -> None:
    """Run where Jupyter runs a notebook's kernel: in its folder, with that folder importable (local modules)."""
    import os

    from .config import HOME_ENV

    if os.environ.get(HOME_ENV):  # a relative store path means relative to where the command was typed
        os.environ[HOME_ENV] = str(Path(os.environ[HOME_ENV]).expanduser().resolve())
    folder = notebook.expanduser().resolve().parent
    os.chdir(folder)
    sys.path.insert(0, str(folder))


def cmd_run(args: argparse.Namespace) -> int:
    from .magics.pipeline import merged_plan, parse_params
    from .run.local import LocalRunner

    plan, defaults = _plan(args.notebook, args.name)
    values = plan.resolve_parameters(parse_params(args.param))
    if args.host:
        from .compile.kfp import compile_pipeline
        from .run.cluster import submit

        run = submit(
            compile_pipeline(plan, defaults=defaults),
            host=args.host,
            parameters=values,
            pipeline_name=plan.name,
            experiment=args.experiment,
            namespace=args.namespace,
        )
        print(f"run {run.id} started: {run.url}")
        return 0
    plan = merged_plan(plan, defaults)
    _enter_notebook_folder(Path(args.notebook))
    from .pipeline.settings import cluster_only

    notes = sorted({note for s in plan.steps for note in cluster_only(s.settings)})
    if notes:
        print("cluster-only settings, not applied locally: " + "; ".join(notes))

    from .run.follow import LogFollower

    follower = LogFollower()
    runner = LocalRunner(workers=args.workers)

    def show(run: Any, state: Any) -> None:
        if state is not None and state.status != "pending":
            log = runner.store.run_dir(run.id) / f"{state.name}.log"
            if state.status == "running":
                follower.start(state.name, log)  # the step's prints, live, as [step] lines
            else:
                follower.stop(state.name)
            took = (
                f" ({state.duration:.2f} s)" if state.status not in ("running",) and state.duration is not None else ""
            )
            print(f"[{run.id}] {state.name}: {state.status}{took}", flush=True)

    try:
        run = runner.run(plan, values, cache=not args.no_cache, listener=None if args.quiet else show)
    finally:
        follower.stop_all()
    metrics = ", ".join(f"{k}={v:.6g}" for k, v in run.metrics.items())
    print(
        f"[{run.id}] {run.status} in {run.duration:.2f} s, {run.cached_steps}/{len(run.steps)} steps cached"
        + (f"; {metrics}" if metrics else "")
    )
    print(f"logs: {runner.store.run_dir(run.id)}")
    if run.status != "done":
        failed = next(s for s in run.steps.values() if s.status in ("failed", "timed_out"))
        print(failed.traceback or failed.error, file=sys.stderr)
        return 1
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .compile.kfp import write_output
    from .compile.size import human, size_warning
    from .images import nbmagic_image

    plan, defaults = _plan(args.notebook, args.name)
    image = (args.image or nbmagic_image()) if args.image is not None else None
    path = write_output(plan, args.output, defaults=defaults, image=image, runtime_image=image)
    if path.suffix == ".py":
        print(f"wrote {path}")
        return 0
    size = path.stat().st_size
    print(f"wrote {path} ({human(size)}, {len(plan.steps)} steps)")
    warning = size_warning(size, len(plan.steps), path.name)
    if warning:
        print(warning, file=sys.stderr)
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
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a saved notebook's pipeline (locally in the notebook's folder, as Jupyter would, or on a KFP cluster with --host)",
    )
    run.add_argument("notebook")
    run.add_argument("--param", action="append", metavar="NAME=VALUE", help="override a pipeline parameter")
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

    conv = sub.add_parser("convert", help="turn a Kale-tagged notebook into an nbmagic notebook")
    conv.add_argument("--from-kale", metavar="KALE.ipynb", help="the Kale notebook (cell tags) to convert")
    conv.add_argument("-o", "--output", required=True, help="the nbmagic notebook to write")
    conv.set_defaults(func=cmd_convert)

    for register in _extensions():
        register(sub)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Subcommands from other rooms (run history, garbage collection, …), each a ``register(subparsers)``."""
    found = []
    for module in ("nbmagic.state_cli",):
        try:
            found.append(__import__(module, fromlist=["register"]).register)
        except ImportError as exc:
            if exc.name != module:
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NbMagicError as exc:
        print(f"nbmagic: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
