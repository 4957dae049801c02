"""%%step, %%pipeline_parameters, %pipeline_metrics, %pipeline_config, %pipeline and %compile_run."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..api import Pipeline
from ..arguments import parse
from ..errors import NbMagicError
from ..pipeline.analysis import to_python
from ..pipeline.cells import (
    PARAMETERS_MAGIC,
    STEP_ARGUMENTS,
    STEP_MAGIC,
    parse_config_line,
    parse_metrics_line,
    parse_parameters,
    parse_step_line,
)
from ..pipeline.settings import SETTING_ARGUMENTS, STORE_ARGUMENTS
from .common import arguments, in_notebook, usage_errors
from .state import kernel_state


class _QuietError(Exception):
    """Re-raised after a %%step body failed: IPython already showed the traceback once."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original

    def _render_traceback_(self) -> list[str]:
        return []


@magics_class
class PipelineMagics(Magics):
    """Record pipeline structure as cells run, and compile/run it."""

    @property
    def state(self):  # noqa: ANN201
        return kernel_state(self.shell)

    def _run_body(self, body: str) -> None:
        """Run a cell body exactly like a normal cell; a failure fails this cell too."""
        self.state.nested += 1
        try:
            result = self.shell.run_cell(body, store_history=False)
        finally:
            self.state.nested -= 1
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            raise _QuietError(error)

    @magic_arguments(name="%step")  # the usage line then reads %%step
    @arguments(STEP_ARGUMENTS + SETTING_ARGUMENTS)
    @cell_magic("step")
    @usage_errors
    def step(self, line: str, cell: str) -> None:
        """Record this cell as pipeline step NAME, then run it like a normal cell.

        Edges come from data flow: a step that reads a variable runs after the nearest earlier step that
        assigns it. ``--after`` adds edges that carry no data. Imports, functions and classes from ordinary
        cells are made available inside the step. Settings (resources, retries, timeout, env, secrets,
        volumes, image, packages, caching) apply to this step on top of ``%pipeline_config``.

        Several cells with the same NAME form one step, in notebook order (a continuation). With cell ids or a
        notebook file each cell is its own part. Without either (papermill, nbclient, plain IPython), a cell
        whose code matches no recorded part of NAME, nor its first line, is taken as the next part, and one
        line says so; ``%pipeline --remove NAME`` starts the step over.

        Reuse (``--reuse`` here or on ``%pipeline_config --reuse``; off by default; ``--no-reuse`` always runs
        the cell): when the step's code, the notebook code it uses, the parameters and the kernel's values it
        reads (hashed from what the kernel holds now), package versions and its ``--inputs`` files are unchanged,
        the cell is not run: its results are loaded from the store (where an earlier cell or ``%compile_run``
        left them), what it printed is shown again, and one line says it was reused. A cell that runs stores
        its results under the same key, so ``%compile_run`` and the next restart take them.

        What reuse skips: the cell's side effects. Prints are replayed; files it writes and plots it draws are
        not made again (nor values it displays, nor library state it changes, such as a random generator's). A step that reads a file should declare it, ``--inputs data/raw.csv`` (its content hash
        joins the key: a changed file means the step runs, here and in ``%compile_run``; on a cluster the file
        must be at that path in the step's pod), or use ``--no-reuse``.

        Loaded arrays: a numpy array under 64 MiB is read into memory of its own, as running the cell leaves it.
        One of 64 MiB or more is mapped copy-on-write from the store (writes work and never reach the store), and
        an array inside a list, dict or other container is a view of the loaded data: ``X.resize(n)`` on those
        says it does not own its data; ``X = np.resize(X, n)`` or ``X = X.copy()`` work.
        A loaded DataFrame or Series is writable, as the cell's is (``df.loc[...] = ...``, ``df['a'] *= 2``).

        Carried values: values from ordinary cells the step uses (``k = 2``, ``history = []``) are
        fingerprinted; a cell whose kernel holds other values than its stored results were computed with runs
        instead, and results computed with values the notebook's cells do not give are kept for this kernel
        only, never for ``%compile_run``. A value the cell changes in place unseen by its code is found
        (fingerprints before and after) and kept with its results.

        The cell simply runs, one line saying why, when reuse cannot be sure: a value it reads or assigns
        cannot be hashed or stored, two values it assigns (or one it assigns and one it reads) share a changeable
        object neither holds as a whole (``c = [b['x']]`` next to ``b``, a numpy view ``b = X[:10]``; lists,
        tuples, dicts, sets, deques, plain objects' attributes, partials, closures, pandas object columns are
        walked, arrays by their memory, subclasses of ``str``/``int``/``tuple``... with attributes (or defined in
        the notebook) like any object; values whose memory overlaps, compared by the byte ranges of numpy arrays,
        pandas blocks and indexes and torch storages (``df = pd.DataFrame(arr, copy=False)``, ``X = df.iloc[:, :-1]``,
        ``torch.from_numpy(arr)``, ``t.view(-1)`` next to the other), would load as copies: it runs (with pandas'
        copy-on-write mode on, frames and series sharing blocks behave as copies and do not count), inside one
        value too (``{'X': X, 'v': X[:5]}``, an object holding a frame and its ``.values``); a tensor
        holding gradients: it runs; anything else inside a value, or too much to walk (a million objects or a
        second of CPU, garbage collection not counted): it runs; a value a
        module it imports holds, ``cfg = mod.CONFIG``, would load as a copy: it runs; a name bound to another value or a part of it by subscripts, ``b = a``,
        ``part = nested['rows']``, a ``for`` loop's leftover, is loaded as that very object, and a column taken from a frame, ``y = df['y']``, ``df.iloc[:, -1]``, ``df['y'].values``, as that column of the loaded frame); it calls ``exec``/``eval`` or writes through ``globals()``/``vars()``/``locals()``; it changes a class the notebook defines (``Cfg.lr = 0.5``), a value is or holds (in a list, a
        partial, an attribute) a function or class the notebook defines (loaded from the store it would not see
        the kernel's globals), it deletes a name on some paths only, the step spans several cells, a local module
        it uses, or one that module imports (``import_module('x')`` with a constant name too; a name given at run
        time: it runs), was edited after the kernel imported it (the key holds every such
        module's source, here and in ``%compile_run``), a step it runs ``--after`` failed, or a value holds a secret (``--secret`` values and ``--secret-file`` contents are never stored; kept
        output shows ``***`` in their place).

        The kernel's names: only names the run bound are stored. The cell runs next time when it binds or removes
        a name its code does not show (``globals()[n] = …``, ``exec``), or assigns a name on some paths only
        (``if n > 5: y = n``) and left the kernel's value as it was; a part of a local module's value
        (``cfg = mod.CONFIG['train']``) too. It runs instead of being reused when it may change a value in place
        (it reads or changes it, or carries it) that another kernel value reaches (``box = {'r': rows}`` before
        ``rows.append(3)``) or whose memory it uses (``df = pd.DataFrame(arr, copy=False)`` before ``arr += 1``):
        a loaded copy would leave the other holder stale.

        Example::

            %%step train --after process --memory 4Gi --retries 2
            model = fit(X, y, lr)
        """
        name, after, _ = parse_step_line(line)  # validates before anything is recorded
        self.state.record_current(f"%%{STEP_MAGIC} {line}\n{cell}")
        self._warn_step(name, after, cell)
        from ..run.reuse import run_step_cell

        run_step_cell(self.state, name, line, self.shell.user_ns, lambda: self._run_body(cell), cell)

    def _warn_step(self, name: str, after: tuple[str, ...], cell: str) -> None:
        """One line for a step that runs nothing, or that runs --after a step not recorded yet."""
        if all(not text.strip() or text.strip().startswith("#") for text in cell.splitlines()):
            print(f"nbmagic: warning: step {name!r} holds only comments", flush=True)
        if not after:
            return
        try:
            known = {s.name for s in self.state.recorder.notebook(self.state.notebook_path(None)).steps}
        except NbMagicError:
            return
        for other in after:
            if other not in known:
                print(
                    f"nbmagic: warning: step {name!r} runs --after {other!r}, which is not a step yet "
                    "(%compile_run stops until it is)",
                    flush=True,
                )

    @cell_magic("pipeline_parameters")
    @usage_errors
    def pipeline_parameters(self, line: str, cell: str) -> None:
        """Record this cell's assignments as pipeline parameters (int, float, str, bool), then run it.

        Only ``name = literal`` lines belong here; their types come from the defaults. Example::

            %%pipeline_parameters
            lr = 0.01
            epochs = 20
            kind = "mlp"
        """
        parse_parameters(to_python(cell), "%%pipeline_parameters")
        self.state.record_current(f"%%{PARAMETERS_MAGIC} {line}\n{cell}")
        self._run_body(cell)

    @magic_arguments()
    @argument("names", nargs="+", help="variables that hold the pipeline's metrics (numbers)")
    @line_magic("pipeline_metrics")
    @usage_errors
    def pipeline_metrics(self, line: str) -> None:
        """Declare which variables are the pipeline's metrics; the step that assigns each produces it."""
        parse_metrics_line(line)  # validation; the cell itself is recorded by the post-run hook

    @magic_arguments()
    @arguments(SETTING_ARGUMENTS + STORE_ARGUMENTS)
    @line_magic("pipeline_config")
    @usage_errors
    def pipeline_config(self, line: str) -> None:
        """Pipeline-wide defaults for every step's settings (a step's own options win).

        Example: ``%pipeline_config --image python:3.11 --memory 2Gi --retries 1``

        ``--store s3://BUCKET/PREFIX`` (or ``gs://BUCKET/PREFIX``, ``file:///PATH``) makes this kernel record runs and values in that shared
        store as well (``$NBMAGIC_STORE_URI``).
        """
        import os

        from ..store_uri import ENV

        settings = parse_config_line(line)  # the cell itself is recorded by the post-run hook, like the file's
        if settings.store:
            os.environ[ENV] = settings.store

    @magic_arguments()
    @argument("--notebook", help="the notebook file, when the kernel cannot find it")
    @argument("--remove", metavar="STEP", help="forget a recorded step (for front ends without a notebook file)")
    @argument("--reset", action="store_true", help="forget everything recorded in this kernel")
    @line_magic("pipeline")
    @usage_errors
    def pipeline(self, line: str) -> Any:
        """Show the recorded pipeline: steps, edges with the variables that flow on them, parameters, metrics."""
        args = parse(self.pipeline, line)
        if args.reset:
            self.state.recorder.reset()
            print("nbmagic: forgot every recorded cell")
            return None
        if args.remove:
            if not self.state.recorder.forget_step(args.remove):
                raise NbMagicError(f"no recorded step {args.remove!r}")
            print(f"nbmagic: forgot step {args.remove!r}")
            return None
        plan = self.state.plan(args.notebook)
        return PlanView(plan)

    @magic_arguments()
    @argument("--param", action="append", metavar="NAME=VALUE", help="override a pipeline parameter (repeatable)")
    @argument("--no-cache", action="store_true", help="run every step, reusing nothing")
    @argument("--workers", type=int, default=None, help="steps run at once locally (default: number of cores)")
    @argument(
        "--output", "-o", metavar="FILE", help="write the compiled pipeline: .yaml for KFP IR, .py for readable KFP DSL"
    )
    @argument("--no-run", action="store_true", help="only compile (with --output)")
    @argument(
        "--host", help="KFP API URL: run on that cluster instead of locally (or $NBMAGIC_KFP_HOST with --cluster)"
    )
    @argument("--cluster", action="store_true", help="run on the KFP cluster named by $NBMAGIC_KFP_HOST")
    @argument("--experiment", help="KFP experiment name (cluster runs)")
    @argument("--namespace", help="Kubernetes namespace (cluster runs)")
    @argument("--notebook", help="the notebook file, when the kernel cannot find it")
    @argument("--name", help="pipeline name (default: the notebook's file name)")
    @argument("--quiet", action="store_true", help="no live progress")
    @line_magic("compile_run")
    @usage_errors
    def compile_run(self, line: str) -> Any:
        """Compile the recorded steps into a KFP v2 pipeline and run it — on this machine by default.

        Locally, independent steps run in parallel and unchanged steps are reused from the cache.
        ``run = %compile_run --param lr=0.1`` returns the Run: ``run.metrics``, ``run.steps``,
        ``run.logs("train")``, ``run.value("model")``.
        """
        args = parse(self.compile_run, line)
        pipeline = Pipeline(self.state.plan(args.notebook, args.name))
        values = pipeline.values(args.param)  # wrong types fail here, before anything runs
        if args.output or args.host or args.cluster:
            from ..compile.inputs import cluster_inputs_note

            note = cluster_inputs_note(pipeline.plan)
            if note:
                print(note, flush=True)
        if args.output:
            print(f"nbmagic: wrote {pipeline.compile(args.output)}")
        if args.no_run:
            if not args.output:
                raise NbMagicError("--no-run only makes sense with --output FILE")
            return None
        if args.host or args.cluster:
            run = pipeline.submit(values, host=args.host, experiment=args.experiment, namespace=args.namespace)
            print(f"nbmagic: run {run.id} started on {run.url}")
            return run
        notes = pipeline.local_notes()
        if notes:
            print("nbmagic: cluster-only settings, not applied locally: " + "; ".join(notes))
        view = ProgressView(quiet=args.quiet)
        run = pipeline.run(values, cache=not args.no_cache, workers=args.workers, listener=view.update)
        self.state.last_run = run
        view.close(run)
        if run.status == "failed":
            failed = next((s for s in run.steps.values() if s.status in ("failed", "timed_out")), None)
            if failed is not None and failed.traceback:
                print(failed.traceback, end="", file=__import__("sys").stderr)
            from ..errors import RunFailed

            reason = (failed.error if failed is not None else run.error) or "a step failed"
            raise RunFailed(run, f"run {run.id} failed: {reason} (the run: %runs last, or this error's .run)")
        return run


class PlanView:
    """``%pipeline``'s result: text in a terminal, text and a DAG picture in a notebook."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    def __repr__(self) -> str:
        from ..pipeline.render import plan_text

        return plan_text(self.plan)

    def _repr_html_(self) -> str:
        import html

        from ..pipeline.render import plan_svg, plan_text
        from ..theme import MONO

        return f"<div>{plan_svg(self.plan)}<pre style='{MONO}'>{html.escape(plan_text(self.plan))}</pre></div>"


class ProgressView:
    """Live step states: an updating table in a notebook, plain lines in a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.rich = in_notebook()
        self.handle = None
        self._last: dict[str, str] = {}

    def update(self, run: Any, state: Any) -> None:
        if self.quiet:
            return
        if self.rich:
            from IPython.display import display

            from ..run.result import progress_html, progress_text

            data = {"text/html": progress_html(run), "text/plain": progress_text(run)}
            if self.handle is None:
                self.handle = display(data, raw=True, display_id=True)
            else:
                self.handle.update(data, raw=True)
        elif state is not None and self._last.get(state.name) != state.status:
            self._last[state.name] = state.status
            took = f" ({state.duration:.2f} s)" if state.status not in ("running", "pending") and state.duration else ""
            print(f"[{run.id}] {state.name}: {state.status}{took}", flush=True)

    def close(self, run: Any) -> None:
        if not self.quiet and not self.rich:
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in run.metrics.items())
            print(f"[{run.id}] {run.status} in {run.duration:.2f} s" + (f"; {metrics}" if metrics else ""), flush=True)
