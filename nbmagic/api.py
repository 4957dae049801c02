"""The library under both front ends (the magics and the ``nbmagic`` command); no IPython shell needed.

    from nbmagic.api import Pipeline
    pipeline = Pipeline.from_notebook("train.ipynb")
    run = pipeline.run({"lr": 0.1})          # locally; run.metrics, run.value("model")
    pipeline.compile("train.yaml")           # KFP IR YAML (or readable DSL for a .py path)
    pipeline.submit(host="http://kfp:8888")  # a KFP cluster run
    experiment = pipeline.tune(["lr=double(1e-4,1e-1,log)"], max_trials=20)

``runs``, ``gc``, ``restore`` and ``serve`` work on the store and the kernel-free model server the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import NbMagicError

Spec = tuple[tuple[str, ...], dict[str, Any]]


def parse_params(pairs: Iterable[str] | None) -> dict[str, str]:
    """``["lr=0.1", "kind=svm"]`` -> ``{"lr": "0.1", "kind": "svm"}``; the plan types them."""
    values: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise NbMagicError(f"--param {pair!r}: expected NAME=VALUE")
        values[name.strip()] = value
    return values


class Pipeline:
    """A notebook's pipeline (steps, parameters, metrics, pipeline-wide settings), ready to run, compile or tune."""

    def __init__(self, plan: Any) -> None:
        self.plan = plan

    @classmethod
    def from_notebook(cls, path: str | os.PathLike[str], name: str | None = None) -> Pipeline:
        """The pipeline a saved ``.ipynb`` declares (its ``%%step`` cells and the magics around them).

        A ``%pipeline_config --store URI`` line in it makes URI this process's shared store, as running that
        cell does in a kernel (unless ``$NBMAGIC_STORE_URI`` already names one)."""
        from .pipeline.cells import read_cells
        from .pipeline.notebook import read_notebook
        from .pipeline.plan import build_plan

        notebook = Path(path).expanduser()
        if not notebook.is_file():
            raise NbMagicError(f"no notebook {path}")
        recorded = read_cells(read_notebook(notebook))
        for warning in recorded.warnings:  # e.g. a step cell that holds only comments
            print(f"nbmagic: warning: {warning}")
        plan = build_plan(recorded, notebook_path=str(notebook.resolve()), name=name)
        if plan.defaults.store:
            from .store_uri import ENV

            os.environ.setdefault(ENV, plan.defaults.store)
        return cls(plan)

    @classmethod
    def from_recorder(
        cls, recorder: Any, notebook: str | os.PathLike[str] | None = None, name: str | None = None
    ) -> Pipeline:
        """The pipeline a kernel recorded as its cells ran (merged with its notebook file when given)."""
        from .pipeline.plan import build_plan

        path = Path(notebook) if notebook else None
        return cls(build_plan(recorder.notebook(path), notebook_path=str(path) if path else None, name=name))

    @property
    def name(self) -> str:
        return self.plan.name

    def values(self, params: Mapping[str, Any] | Iterable[str] | None = None) -> dict[str, Any]:
        """Every parameter's value: the defaults with ``params`` (a mapping or ``NAME=VALUE`` texts) typed over them."""
        if params is not None and not isinstance(params, Mapping):
            params = parse_params(params)
        return self.plan.resolve_parameters(dict(params or {}))

    def merged(self) -> Any:
        """The plan with pipeline-wide settings merged under each step's own (what actually runs)."""
        from .pipeline.settings import merged_plan

        return merged_plan(self.plan, self.plan.defaults)

    def local_notes(self) -> list[str]:
        """Settings that only a cluster applies (GPUs, node selectors …), one note each."""
        from .pipeline.settings import cluster_only

        return sorted({note for s in self.merged().steps for note in cluster_only(s.settings)})

    def run(
        self,
        params: Mapping[str, Any] | Iterable[str] | None = None,
        *,
        cache: bool = True,
        workers: int | None = None,
        listener: Callable[[Any, Any], None] | None = None,
    ) -> Any:
        """Run on this machine (independent steps in parallel, unchanged steps from the cache); the Run."""
        from .run.local import LocalRunner

        values = self.values(params)
        return LocalRunner(workers=workers).run(self.merged(), values, cache=cache, listener=listener)

    def compile(self, output: str | os.PathLike[str] | None = None, *, image: str | None = None) -> str | Path:
        """KFP IR YAML text; with ``output``, write it there (``.py``: readable KFP DSL) and return the path.

        ``image``: run the steps in nbmagic's cluster image, whose nbmagic runtime they use.
        """
        from .compile.kfp import compile_pipeline, write_output

        if output is None:
            return compile_pipeline(self.plan, defaults=self.plan.defaults, image=image, runtime_image=image)
        return write_output(self.plan, output, defaults=self.plan.defaults, image=image, runtime_image=image)

    def submit(
        self,
        params: Mapping[str, Any] | Iterable[str] | None = None,
        *,
        host: str | None = None,
        experiment: str | None = None,
        namespace: str | None = None,
        record: bool = True,
    ) -> Any:
        """Compile and start a run on the KFP cluster at ``host`` (default ``$NBMAGIC_KFP_HOST``); the ClusterRun.

        With ``record``, the run is listed in the store (``runs()``) like local runs.
        """
        from .run.cluster import submit

        values = self.values(params)
        run = submit(
            self.compile(),
            host=host,
            parameters=values,
            pipeline_name=self.name,
            experiment=experiment,
            namespace=namespace,
        )
        if record:
            from .store.history import record_cluster_run
            from .store.runs import RunStore

            steps = [s.name for s in self.plan.steps]
            record_cluster_run(RunStore(), run, self.name, values, steps, experiment=experiment)
        return run

    def tune(self, params: Iterable[str] | Any, **options: Any) -> Any:
        """Start tuning: ``params`` are ``NAME=TYPE(...)`` texts (or an ExperimentSpec); see :func:`tune`."""
        return tune(self, params, **options)


_SPEC_OPTIONS = (
    "fixed",
    "objective",
    "goal",
    "metrics",
    "algorithm",
    "max_trials",
    "parallel",
    "max_failed",
    "seed",
    "name",
)


def tune(pipeline: Pipeline, params: Iterable[str] | Any, *, wait: bool = False, **options: Any) -> Any:
    """Start a tuning experiment of ``pipeline``: Optuna locally, or Katib with ``host=``; the Experiment.

    ``params`` are ``NAME=TYPE(...)`` texts (``lr=double(1e-4,1e-1,log)``) or a ready ExperimentSpec. Spec options:
    fixed, objective, goal, metrics, algorithm, max_trials, parallel, max_failed, seed, name. Start options:
    restart, cache, host, namespace, image, kfp_experiment, service_account, api_server.
    """
    from .tune.space import ExperimentSpec
    from .tune.start import build_spec, start

    spec_options = {k: options.pop(k) for k in _SPEC_OPTIONS if k in options}
    if isinstance(params, ExperimentSpec):
        if spec_options:
            raise NbMagicError(f"tune: {', '.join(spec_options)} belong in the ExperimentSpec given")
        spec = params
    else:
        spec = build_spec(pipeline.plan, list(params), **spec_options)
    experiment = start(pipeline.plan, spec, defaults=pipeline.plan.defaults, **options)
    if wait:
        experiment.wait()
    return experiment


def serve(model: Any, **options: Any) -> Any:
    """Serve ``model`` (with an optional pre-processing transformer) locally or on KServe; the server handle."""
    from .serve.api import serve as serve_model

    return serve_model(model, **options)


def store(root: str | os.PathLike[str] | None = None) -> Any:
    """The run store (``$NBMAGIC_HOME/store`` unless ``root``)."""
    from .store.runs import RunStore

    return RunStore(root) if root else RunStore()


def restore(
    run: str,
    step: str | None = None,
    names: Iterable[str] | None = None,
    *,
    namespace: dict[str, Any] | None = None,
    provenance: Any = None,
    root: str | os.PathLike[str] | None = None,
) -> Any:
    """Load the state after ``step`` of ``run`` (id, prefix, ``last``, ``best``) into ``namespace``; the report."""
    from .restore import restore as restore_state

    return restore_state(store(root), run, step, names, namespace=namespace, provenance=provenance)


RUNS_ARGUMENTS: list[Spec] = [
    (
        ("--where", "-w"),
        dict(
            action="append",
            metavar="COND",
            help='filter, e.g. "val_loss<0.3", "lr>=0.01, status=done", "pipeline~demo", "age<2h"',
        ),
    ),
    (
        ("--sort", "-s"),
        dict(
            metavar="FIELD",
            help="sort by a metric, parameter or column; '-' in front for descending (default -started)",
        ),
    ),
    (("--limit", "-n"), dict(type=int, default=None, help="show at most N runs (default 50; 0 for all)")),
    (("--pipeline",), dict(help="only runs of this pipeline")),
    (("--experiment",), dict(help="only trials of this tuning experiment")),
    (
        ("--compare",),
        dict(nargs=2, metavar=("A", "B"), help="parameter, metric and step code differences between two runs"),
    ),
]

GC_ARGUMENTS: list[Spec] = [
    (("--keep-last",), dict(type=int, metavar="N", help="keep the N most recent runs")),
    (("--older-than",), dict(metavar="AGE", help="drop runs older than AGE (e.g. 30d, 12h)")),
    (("--max-size",), dict(metavar="SIZE", help="drop oldest runs until the store's values fit in SIZE (e.g. 5GB)")),
    (
        ("--keep",),
        dict(action="append", metavar="RUN", help="never drop this run (repeatable; id, prefix, last or best)"),
    ),
    (("--no-keep-best",), dict(action="store_true", help="do not protect each experiment's best trial")),
    (("--dry-run",), dict(action="store_true", help="list what would go and the bytes freed; remove nothing")),
    (
        ("--verify",),
        dict(action="store_true", help="check every stored value against its hash; remove corrupt ones (fsck)"),
    ),
    (
        ("--set-policy",),
        dict(action="store_true", help="save the given limits as the automatic policy applied after runs"),
    ),
    (
        ("--sign-unsigned",),
        dict(
            action="store_true",
            help="list values not signed with the store's key (stored before signing existed: %%restore refuses "
            "pickles among them); with --yes, check and sign them: only if you trust whoever could write the store",
        ),
    ),
    (
        ("--yes",),
        dict(
            nargs="?",
            const=True,
            metavar="SET",
            help="with --sign-unsigned: sign the values listed; SET is the digest of that set the listing printed "
            "(nothing is signed if the unsigned values changed since)",
        ),
    ),
    (("--show-policy",), dict(action="store_true", help="print the automatic policy")),
    (("--clear-policy",), dict(action="store_true", help="remove the automatic policy")),
]

DEFAULT_LIMIT = 50


def runs(
    where: str | Iterable[str] | None = None,
    sort: str | None = None,
    limit: int | None = None,
    *,
    pipeline: str | None = None,
    experiment: str | None = None,
    compare: tuple[str, str] | list[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Any:
    """The store's runs as a RunTable (filtered, sorted, at most ``limit``; 0 for all), or a Comparison of two."""
    from .restore import resolve_run
    from .store.history import RunTable, query
    from .store.history import compare as compare_runs

    found = store(root)
    if compare:
        first, second = compare
        return compare_runs(found, first, second, resolve=lambda ref: resolve_run(found, ref))
    limit = DEFAULT_LIMIT if limit is None else limit
    if limit < 0:
        raise NbMagicError(f"--limit must be 0 (all) or more, not {limit}")
    table, total = query(found, where, sort, limit, pipeline=pipeline, experiment=experiment)
    return RunTable(table, total)


def logs(run: str, step: str, *, root: str | os.PathLike[str] | None = None) -> str:
    """What ``step`` printed in ``run`` (an id, a unique prefix, ``last``, ``best``): the log kept here, else the
    one published to the shared store by the home that ran it."""
    from .restore import resolve_run
    from .store.shared_logs import step_log

    found = store(root)
    run_id = resolve_run(found, run)
    if not any(row["step"] == step for row in found.step_rows(run_id)):
        names = ", ".join(row["step"] for row in found.step_rows(run_id))
        raise NbMagicError(f"run {run_id} has no step {step!r} (steps: {names})")
    text = step_log(found, run_id, step)
    if text is None:
        import json

        from .store.lineage import execution

        row = next(r for r in found.step_rows(run_id) if r["step"] == step)
        origin = execution(found, json.loads(row["properties"] or "{}").get("reused_execution") or -1)
        if row["cached"] and origin is not None:
            raise NbMagicError(
                f"run {run_id}: step {step!r} was taken from the cache, it printed nothing; it was computed in run"
                f" {origin.run_id}: logs({origin.run_id!r}, {origin.step!r})"
            )
        raise NbMagicError(f"run {run_id}: step {step!r} left no log here or in the shared store")
    return text


def gc(
    keep_last: int | None = None,
    older_than: str | None = None,
    max_size: str | None = None,
    *,
    keep: Iterable[str] | None = None,
    keep_best: bool = True,
    dry_run: bool = False,
    verify: bool = False,
    set_policy: bool = False,
    show_policy: bool = False,
    clear_policy: bool = False,
    sign_unsigned: bool = False,
    yes: str | bool | None = None,
    root: str | os.PathLike[str] | None = None,
) -> Any:
    """Drop old runs and unreferenced values (a GcReport), or show, save or clear the automatic policy (a line).

    ``sign_unsigned`` lists the unsigned values that could run code on load and the digest of that set;
    ``yes=<that digest>`` then signs exactly those (it goes with ``verify`` only)."""
    from .restore import resolve_run
    from .store.gc import Policy, collect, load_policy, save_policy
    from .store.gc import verify as verify_values

    found = store(root)
    if yes not in (None, False) and not sign_unsigned:
        raise NbMagicError("--yes goes with --sign-unsigned")
    if sign_unsigned:
        from .store.gc import sign_unsigned as sign

        ignored = [
            flag
            for flag, given in (
                ("--dry-run", dry_run),
                ("--keep-last", keep_last is not None),
                ("--older-than", older_than is not None),
                ("--max-size", max_size is not None),
                ("--keep", bool(keep)),
                ("--no-keep-best", not keep_best),
                ("--set-policy", set_policy),
                ("--show-policy", show_policy),
                ("--clear-policy", clear_policy),
            )
            if given
        ]
        if ignored:
            raise NbMagicError(
                f"gc: --sign-unsigned cannot go with {', '.join(ignored)}: run it alone (--verify and --yes SET may "
                "join it); without --yes it only lists"
            )
        if yes is True or yes == "":
            raise NbMagicError(
                "gc: --yes needs the set the listing printed: run gc --sign-unsigned, check the values it lists, "
                "then gc --sign-unsigned --yes SET"
            )
        checked = verify_values(found).text() if verify else ""  # corrupt values go first, never signed
        report = sign(found, yes=yes or None)
        report.verified = checked
        return report
    if show_policy:
        policy = load_policy(found)
        return f"automatic gc policy: {policy.describe() if policy else 'none'}"
    if clear_policy:
        save_policy(found, None)
        return "automatic gc policy removed"
    given = {"keep_last": keep_last, "older_than": older_than, "max_size": max_size, "keep_best": keep_best}
    policy = Policy.from_mapping(given, "gc")
    if set_policy:
        if policy.empty():
            raise NbMagicError("--set-policy needs --keep-last, --older-than or --max-size")
        save_policy(found, policy)
        return f"automatic gc policy: {policy.describe()} (applied after each run; in {found.root / 'gc.json'})"
    if verify:
        checked = verify_values(found)
        if policy.empty():
            return checked
        report = collect(
            found, policy, dry_run=dry_run, keep=[resolve_run(found, ref) for ref in (keep or [])], shared=True
        )
        report.notes.append(checked.text().splitlines()[0])
        return report
    if policy.empty():
        configured = load_policy(found)
        if configured is None or configured.empty():
            raise NbMagicError(
                "gc: give --keep-last N, --older-than AGE or --max-size SIZE (or set an automatic policy)"
            )
        policy = configured
    kept = [resolve_run(found, ref) for ref in (keep or [])]
    return collect(found, policy, dry_run=dry_run, keep=kept, shared=True)


def runs_options(args: Any) -> dict[str, Any]:
    """``runs()`` keyword arguments from parsed RUNS_ARGUMENTS."""
    names = ("where", "sort", "limit", "pipeline", "experiment", "compare")
    return {name: getattr(args, name) for name in names}


def gc_options(args: Any) -> dict[str, Any]:
    """``gc()`` keyword arguments from parsed GC_ARGUMENTS."""
    names = (
        "keep_last",
        "older_than",
        "max_size",
        "keep",
        "dry_run",
        "verify",
        "set_policy",
        "show_policy",
        "clear_policy",
        "sign_unsigned",
        "yes",
    )
    return {name: getattr(args, name) for name in names} | {"keep_best": not args.no_keep_best}


def enter_notebook_folder(notebook: Path) -> None:
    """Run where Jupyter runs a notebook's kernel: in its folder, with that folder importable (local modules)."""
    import sys

    from .config import HOME_ENV

    if os.environ.get(HOME_ENV):  # a relative store path means relative to where the command was typed
        os.environ[HOME_ENV] = str(Path(os.environ[HOME_ENV]).expanduser().resolve())
    folder = notebook.expanduser().resolve().parent
    os.chdir(folder)
    sys.path.insert(0, str(folder))
