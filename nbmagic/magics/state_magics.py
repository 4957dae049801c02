"""%restore, %lineage, %runs and %gc: bring a run's state back, trace values, list runs, collect garbage."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .. import api
from ..api import GC_ARGUMENTS, RUNS_ARGUMENTS
from ..arguments import parse
from ..errors import NbMagicError
from .common import arguments, in_notebook, usage_errors

_PROVENANCE: WeakKeyDictionary[Any, Any] = WeakKeyDictionary()


def provenance(shell: Any) -> Any:
    """Which of ``shell``'s variables came from which stored value (set by %restore)."""
    from ..restore import Provenance

    found = _PROVENANCE.get(shell)
    if found is None:
        found = _PROVENANCE[shell] = Provenance()
    return found


def _store() -> Any:
    from ..store.runs import RunStore

    return RunStore()


@magics_class
class StateMagics(Magics):
    """Run state: restore it, trace it, list it, collect it."""

    @magic_arguments()
    @argument(
        "run", help="run id, unique prefix, 'last', 'best' (best trial of the latest experiment) or 'best:EXPERIMENT'"
    )
    @argument("step", nargs="?", help="restore the state right after this step (default: the run's last step)")
    @argument("--vars", metavar="A,B", help="only these variables")
    @line_magic("restore")
    @usage_errors
    def restore(self, line: str) -> None:
        """Load a run's state into the kernel: the values of STEP and its ancestors, as the next cell would see them.

        Examples::

            %restore last
            %restore best --vars model
            %restore 20250101-120000-ab12 train
        """
        args = parse(self.restore, line)
        names = [n.strip() for n in args.vars.split(",")] if args.vars else None
        report = api.restore(
            args.run, args.step, names, namespace=self.shell.user_ns, provenance=provenance(self.shell)
        )
        if in_notebook():
            from IPython.display import display

            display(report)
        else:
            print(report.text())

    @magic_arguments()
    @argument("name", help="a kernel variable (restored or produced by a run) or an artifact id / value hash")
    @argument(
        "--run", help="look the variable up in this run (default: where it was restored from, else the latest run)"
    )
    @line_magic("lineage")
    @usage_errors
    def lineage(self, line: str) -> Any:
        """Where a value came from (steps, inputs, parameters, code versions) and what consumed it."""
        from ..store.lineage import lineage, resolve_artifact

        args = parse(self.lineage, line)
        store = _store()
        name = args.name
        ns = self.shell.user_ns
        if name in ns and args.run is None:
            origin = provenance(self.shell).origin(name, ns[name])
            if origin is not None:
                artifact = resolve_artifact(store, str(origin.artifact_id))
                return lineage(
                    store, artifact, origin.run_id, name=name, note=f"restored into the kernel from run {origin.run_id}"
                )
        if name.isidentifier():
            found = self._latest_output(store, name, args.run)
            if found is not None:
                run_id, artifact_id = found
                note = _kernel_note(name, ns, store, artifact_id, run_id)
                return lineage(store, resolve_artifact(store, str(artifact_id)), run_id, name=name, note=note)
            if name in ns:
                raise NbMagicError(f"variable {name!r} did not come from a run: no run in the store assigned {name!r}")
        return lineage(store, resolve_artifact(store, name))

    def _latest_output(self, store: Any, name: str, run: str | None) -> tuple[str, int] | None:
        from ..restore import resolve_run
        from .state import kernel_state

        runs = [resolve_run(store, run)] if run else []
        last = getattr(kernel_state(self.shell).last_run, "id", None)
        if not runs and last:
            runs.append(last)
        found = store.latest_output(name, runs) if runs else None
        if found is not None:
            return found
        if run:
            raise NbMagicError(f"run {runs[0]} assigned no variable {name!r}")
        return store.latest_output(name)

    @magic_arguments()
    @arguments(RUNS_ARGUMENTS)
    @line_magic("runs")
    @usage_errors
    def runs(self, line: str) -> Any:
        """List runs (id, pipeline, status, parameters, metrics, duration, cached steps), filter, sort, compare.

        Examples::

            %runs --where "val_loss<0.3" --sort val_loss
            %runs --sort -started --limit 10
            %runs --compare last 20250101-120000-ab12
        """
        return api.runs(**api.runs_options(parse(self.runs, line)))

    @magic_arguments()
    @arguments(GC_ARGUMENTS)
    @line_magic("gc")
    @usage_errors
    def gc(self, line: str) -> Any:
        """Drop old runs and free values that no kept run or live cache entry refers to.

        Examples::

            %gc --keep-last 100 --dry-run
            %gc --older-than 30d --max-size 20GB
            %gc --keep-last 200 --set-policy     # applied automatically after runs
        """
        result = api.gc(**api.gc_options(parse(self.gc, line)))
        if isinstance(result, str):
            print(result)
            return None
        return result


def _kernel_note(name: str, ns: dict[str, Any], store: Any, artifact_id: int, run_id: str) -> str:
    """Say whether the kernel's variable is the run's value (when that can be checked cheaply)."""
    if name not in ns:
        return f"{name!r} is not in the kernel; showing run {run_id}'s value"
    from ..runtime import marshal

    digest = marshal.fingerprint(ns[name], name)
    if digest is None:
        return f"the kernel's {name!r} was not restored; showing run {run_id}'s value of that name"
    row = store.artifact(artifact_id)
    same = row is not None and row[1] == digest
    return f"the kernel's {name!r} is {'the same value as' if same else 'different from'} run {run_id}'s"
