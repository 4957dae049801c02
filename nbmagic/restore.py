"""Restore a run's state: the values a notebook would have held right after one step of a run.

Pure library (no IPython): :func:`restore` loads into any namespace dict and returns a report that renders as
text and HTML; :class:`Provenance` remembers which variable came from which stored value for ``%lineage``.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import NbMagicError
from .store.lineage import ArtifactRef, Execution, executions
from .store.runs import RunStore
from .units import format_size


class RestoreError(NbMagicError):
    """A run, step or variable that cannot be restored (one line naming it)."""


PARAMETERS = "(parameters)"


# ----------------------------------------------------------------------------------------- resolving runs


def resolve_run(store: RunStore, ref: str) -> str:
    """A run id from an id, a unique prefix, ``last``, ``best`` or ``best:EXPERIMENT`` (:meth:`RunStore.resolve_run`)."""
    try:
        return store.resolve_run(ref)
    except RestoreError:
        raise
    except NbMagicError as exc:
        raise RestoreError(str(exc)) from None


def best_run(store: RunStore, experiment: str | None = None) -> str:
    """The best finished trial of ``experiment`` (default: the most recent experiment in the store)."""
    return resolve_run(store, f"best:{experiment}" if experiment else "best")


# ----------------------------------------------------------------------------------------- what to load


@dataclass
class StateItem:
    name: str
    step: str  # step that assigned it, or PARAMETERS
    ref: ArtifactRef | None  # None for a parameter
    value: Any = None  # the parameter's value


@dataclass
class RunState:
    """The state right after ``step`` of ``run_id``: for each name, the latest assignment among the step and its ancestors."""

    run_id: str
    step: str
    items: dict[str, StateItem]
    not_kept: dict[str, tuple[str, str]]  # name -> (step, reason)
    kind: str = "local"


def state_after(store: RunStore, run_id: str, step: str | None = None, names: Iterable[str] | None = None) -> RunState:
    """Which values make up the state right after ``step`` (default: the run's last step)."""
    record = store.get_run(run_id)
    if record is None:
        raise RestoreError(f"no run {run_id!r} in the store")
    execs = executions(store, run_id)
    if record.kind != "local" and not any(e.outputs for e in execs):  # a cluster run that wrote to no shared store
        raise RestoreError(
            f"run {run_id} ran on a cluster: its values live in KFP's artifact store, and the KFP v2beta1 API only "
            "gives MLMD artifact ids, not values; restore a local run (or give the pipeline a shared store:"
            " %pipeline_config --store s3://BUCKET/PREFIX)"
        )
    by_step = {e.step: e for e in execs}
    if step is None:
        done = [e for e in execs if e.state in ("done", "cached")]
        if not done:
            raise RestoreError(f"run {run_id} has no finished step to restore ({record.status})")
        leaves = _leaves(store.run_dag(run_id), {e.step for e in done})
        step = done[-1].step if len(leaves) <= 1 else None
        chosen = [e for e in done if e.step in leaves] if step is None else [by_step[step]]
    else:
        if step not in by_step:
            raise RestoreError(f"run {run_id} has no step {step!r} (steps: {', '.join(by_step)})")
        if by_step[step].state not in ("done", "cached"):
            raise RestoreError(
                f"step {step!r} of run {run_id} did not finish ({by_step[step].state}): no state after it"
            )
        chosen = [by_step[step]]
    dag = store.run_dag(run_id)
    wanted: set[str] = set()
    for ex in chosen:
        wanted |= _ancestors(dag, ex.step) | {ex.step}
    items: dict[str, StateItem] = {n: StateItem(n, PARAMETERS, None, v) for n, v in record.parameters.items()}
    not_kept: dict[str, tuple[str, str]] = {}
    for ex in execs:  # execution order is topological: later assignments win
        if ex.step not in wanted:
            continue
        if ex.state not in ("done", "cached"):
            raise RestoreError(f"step {ex.step!r} of run {run_id} did not finish ({ex.state}): its values are missing")
        for name, ref in ex.outputs.items():
            items[name] = StateItem(name, ex.step, ref)
            not_kept.pop(name, None)
        for name, reason in _not_kept(store, ex).items():
            items.pop(name, None)
            not_kept[name] = (ex.step, reason)
    if names is not None:
        names = [n for n in names if n]
        unknown = [n for n in names if n not in items and n not in not_kept]
        if unknown:
            raise RestoreError(
                f"--vars: run {run_id} has no value {unknown[0]!r} at step {step or '/'.join(e.step for e in chosen)}"
                f" (it has: {', '.join(sorted(items)) or 'nothing'})"
            )
        items = {n: items[n] for n in names if n in items}
        not_kept = {n: not_kept[n] for n in names if n in not_kept}
    label = step if step is not None else ", ".join(e.step for e in chosen)
    return RunState(run_id, label, items, not_kept, record.kind)


def _not_kept(store: RunStore, ex: Execution) -> dict[str, str]:
    """Values the step assigned but could not store; a cached step's come from its cache entry."""
    if ex.not_kept or not ex.cached:
        return ex.not_kept
    return store.cached_not_kept(ex.cache_key, ex.reused_execution)


def _ancestors(dag: dict[str, list[str]], step: str) -> set[str]:
    seen: set[str] = set()
    stack = list(dag.get(step, []))
    while stack:
        s = stack.pop()
        if s not in seen:
            seen.add(s)
            stack.extend(dag.get(s, []))
    return seen


def _leaves(dag: dict[str, list[str]], finished: set[str]) -> list[str]:
    """Finished steps no other finished step runs after (several when the DAG ends in parallel branches)."""
    upstream_of_finished = {u for s in finished for u in _ancestors(dag, s)}
    return [s for s in dag if s in finished and s not in upstream_of_finished]


# ----------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    name: str
    type: str
    size: int | None
    step: str
    hash: str | None
    artifact_id: int | None


@dataclass
class RestoreReport:
    """What :func:`restore` put into the namespace and what it replaced there."""

    run_id: str
    step: str
    loaded: list[Loaded]
    replaced: dict[str, str]  # name -> type of the value it replaced
    not_kept: dict[str, tuple[str, str]]
    values: dict[str, Any] = field(default_factory=dict, repr=False)

    def text(self) -> str:
        lines = [f"restored {len(self.loaded)} values from run {self.run_id}, state after step {self.step}"]
        width = max([len(item.name) for item in self.loaded] + [4])
        for item in self.loaded:
            was = f"  (replaced a value of type {self.replaced[item.name]})" if item.name in self.replaced else ""
            lines.append(
                f"  {item.name:<{width}}  {item.type:<40}  {format_size(item.size) if item.hash else '':>9}  {item.step}{was}"
            )
        for name, (step, reason) in self.not_kept.items():
            lines.append(f"  {name:<{width}}  not kept by step {step}: {reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        rows = []
        for item in self.loaded:
            was = html.escape(self.replaced.get(item.name, ""))
            rows.append(
                f"<tr><td style='text-align:left'><code>{html.escape(item.name)}</code></td>"
                f"<td style='text-align:left'>{html.escape(item.type)}</td>"
                f"<td style='text-align:right'>{format_size(item.size) if item.hash else ''}</td>"
                f"<td style='text-align:left'>{html.escape(item.step)}</td><td style='text-align:left'>{was}</td></tr>"
            )
        for name, (step, reason) in self.not_kept.items():
            rows.append(
                f"<tr style='color:#e53935'><td style='text-align:left'><code>{html.escape(name)}</code></td>"
                f"<td style='text-align:left' colspan='2'>not kept: {html.escape(reason)}</td>"
                f"<td style='text-align:left'>{html.escape(step)}</td><td></td></tr>"
            )
        return (
            f"<div><b>restored run {html.escape(self.run_id)}</b> · state after step {html.escape(self.step)}"
            "<table><thead><tr><th style='text-align:left'>name</th><th style='text-align:left'>type</th><th>size</th>"
            "<th style='text-align:left'>from step</th><th style='text-align:left'>replaced</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )


def load_state(store: RunStore, state: RunState) -> dict[str, Any]:
    """Load every value of ``state`` (each checked against its hash); nothing is returned partially."""
    from .store.objects import StoreError

    values: dict[str, Any] = {}
    for name, item in state.items.items():
        if item.ref is None:
            values[name] = item.value
            continue
        try:
            if not store.objects.available(item.ref.hash, name):
                raise RestoreError(
                    f"value {name!r} of run {state.run_id} (step {item.step}) is no longer in the store (removed by gc?)"
                )
            values[name] = store.objects.get(item.ref.hash, name=name)
        except StoreError as exc:
            raise RestoreError(f"run {state.run_id} step {item.step}: {exc}") from None
    return values


def restore(
    store: RunStore,
    run: str,
    step: str | None = None,
    names: Iterable[str] | None = None,
    namespace: dict[str, Any] | None = None,
    provenance: Provenance | None = None,
) -> RestoreReport:
    """Load the state after ``step`` of ``run`` into ``namespace`` (all values load before any is assigned)."""
    from .runtime.marshal import type_name

    run_id = resolve_run(store, run)
    state = state_after(store, run_id, step, names)
    values = load_state(store, state)
    target = namespace if namespace is not None else {}
    replaced = {n: type_name(target[n]) for n in values if n in target}
    loaded = []
    for name, value in values.items():
        item = state.items[name]
        ref = item.ref
        loaded.append(
            Loaded(
                name,
                ref.type if ref and ref.type else type_name(value),
                ref.size if ref else None,
                item.step,
                ref.hash if ref else None,
                ref.id if ref else None,
            )
        )
        target[name] = value
        if provenance is not None:
            if ref is not None:
                provenance.remember(name, value, run_id, item.step, ref.hash, ref.id)
            else:
                provenance.forget(name)
    return RestoreReport(run_id, state.step, loaded, replaced, state.not_kept, values)


# ----------------------------------------------------------------------------------------- provenance


@dataclass
class Origin:
    run_id: str
    step: str
    hash: str
    artifact_id: int


class Provenance:
    """Which kernel variables hold which stored value; forgotten when the variable is rebound."""

    def __init__(self) -> None:
        self._origins: dict[str, tuple[Origin, int, Any]] = {}  # name -> (origin, id(value), callable giving the value)

    def remember(self, name: str, value: Any, run_id: str, step: str, digest: str, artifact_id: int) -> None:
        try:
            ref: Any = weakref.ref(value)
        except TypeError:  # ints, lists, dicts: keep the object itself, so identity stays exact
            ref = lambda value=value: value  # noqa: E731
        self._origins[name] = (Origin(run_id, step, digest, artifact_id), id(value), ref)

    def forget(self, name: str) -> None:
        self._origins.pop(name, None)

    def origin(self, name: str, current: Any) -> Origin | None:
        """Where ``name``'s current value came from, if it is still the value that was restored."""
        entry = self._origins.get(name)
        if entry is None:
            return None
        origin, ident, ref = entry
        if ref() is not current or id(current) != ident:
            self.forget(name)
            return None
        return origin

    def names(self) -> list[str]:
        return sorted(self._origins)
