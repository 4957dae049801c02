"""Lineage over the run index: which execution produced a value, from which inputs, parameters and code, and
who consumed it. Read-only queries on :class:`~nbmagic.store.runs.RunStore`; text and SVG views.

Per execution the index holds: INPUT/OUTPUT events (values with hashes), parameters (``properties``), the
code hash, cache hit (``cached`` + ``properties.reused_execution``), start/end and ``environment``.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NbMagicError
from ..units import format_size


class LineageError(NbMagicError):
    """An unknown value, artifact or run in a lineage query."""


# ----------------------------------------------------------------------------------------- recording helpers


def code_hash(code: str, prelude: str = "") -> str:
    """The identity of a step's code: its cell code and the notebook code (prelude) it runs with."""
    return hashlib.sha256(json.dumps([code, prelude]).encode()).hexdigest()


def environment(modules: Iterable[str] = ()) -> dict[str, Any]:
    """What a step runs with: Python version, platform, and the pinned versions of the packages it imports."""
    import platform

    packages: dict[str, str] = {}
    if modules:
        from ..packages import pinned

        for requirement in pinned(tuple(sorted(set(modules)))):
            name, _, version = requirement.partition("==")
            packages[name] = version
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages}


# ----------------------------------------------------------------------------------------- data


@dataclass
class ArtifactRef:
    id: int
    hash: str
    type: str | None
    format: str | None
    size: int | None
    name: str = ""


@dataclass
class Execution:
    id: int
    run_id: str
    step: str
    state: str
    cached: bool
    started: float | None
    ended: float | None
    cache_key: str | None
    code_hash: str | None
    parameters: dict[str, Any]
    environment: dict[str, Any]
    not_kept: dict[str, str]
    reused_execution: int | None
    inputs: dict[str, ArtifactRef] = field(default_factory=dict)
    outputs: dict[str, ArtifactRef] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


_EXEC_COLUMNS = "id, run_id, step, state, cached, started, ended, cache_key, code_hash, properties, environment"


def _execution_from_row(row: tuple) -> Execution:
    eid, run_id, step, state, cached, started, ended, key, chash, props, env = row
    props = json.loads(props or "{}")
    return Execution(
        eid,
        run_id,
        step,
        state,
        bool(cached),
        started,
        ended,
        key,
        chash,
        dict(props.get("parameters") or {}),
        json.loads(env) if env else {},
        dict(props.get("not_kept") or {}),
        props.get("reused_execution"),
    )


def executions(store: Any, run_id: str) -> list[Execution]:
    """A run's step executions in execution (topological) order, with their inputs and outputs."""
    found = [_execution_from_row(r) for r in store.execution_rows(_EXEC_COLUMNS, run_id=run_id)]
    _attach_events(store, found)
    return found


def execution(store: Any, execution_id: int) -> Execution | None:
    rows = store.execution_rows(_EXEC_COLUMNS, execution_id=execution_id)
    if not rows:
        return None
    found = _execution_from_row(rows[0])
    _attach_events(store, [found])
    return found


def _attach_events(store: Any, found: list[Execution]) -> None:
    by_id = {e.id: e for e in found}
    rows = store.execution_events(list(by_id))
    for eid, kind, name, aid, digest, tname, fmt, size in rows:
        ref = ArtifactRef(aid, digest, tname, fmt, size, name)
        (by_id[eid].inputs if kind == "INPUT" else by_id[eid].outputs)[name] = ref


def step_code_hash(store: Any, ex: Execution, _seen: int = 0) -> str | None:
    """The execution's code hash: recorded, else from its spec file, else from the execution it reused."""
    if ex.code_hash:
        return ex.code_hash
    spec = Path(store.root) / "runs" / ex.run_id / f"{ex.step}.spec.json"
    if spec.is_file():
        try:
            data = json.loads(spec.read_text())
            return code_hash(data.get("code", ""), data.get("prelude", ""))
        except (OSError, ValueError):
            pass
    if ex.reused_execution and _seen < 20:
        original = execution(store, int(ex.reused_execution))
        if original is not None:
            return step_code_hash(store, original, _seen + 1)
    return None


def resolve_artifact(store: Any, text: str) -> ArtifactRef:
    """An artifact from ``artifact:ID``, a numeric id, or a value hash / unique hash prefix (6+ characters)."""
    text = text.strip()
    ident = text.split(":", 1)[1] if text.startswith("artifact:") else text
    if ident.isdigit() and len(ident) < 12:
        row = store.artifact(int(ident))
        if row:
            return ArtifactRef(*row)
        raise LineageError(f"no artifact {text!r} in the store")
    if len(ident) < 6 or not all(c in "0123456789abcdef" for c in ident.lower()):
        raise LineageError(f"{text!r} is neither a kernel variable nor an artifact id or value hash")
    rows = store.artifacts_with_prefix(ident.lower())
    if not rows:
        raise LineageError(f"no stored value with hash {text!r}")
    if len(rows) > 1:
        raise LineageError(f"value hash prefix {text!r} is ambiguous ({rows[0][1][:16]}, {rows[1][1][:16]}, …)")
    return ArtifactRef(*rows[0])


def _events_of(store: Any, artifact_id: int, kind: str) -> list[tuple[int, str, str, str]]:
    """(execution id, run id, step, name) of executions that read (INPUT) or wrote (OUTPUT) an artifact."""
    return store.artifact_events(artifact_id, kind)


# ----------------------------------------------------------------------------------------- the graph


@dataclass
class Lineage:
    """A value's history: the executions upstream of it in one run (nearest first) and its consumers."""

    artifact: ArtifactRef
    run_id: str | None
    producer: Execution | None
    upstream: list[Execution]  # producer first, then its ancestors (nearest first)
    sources: dict[int, dict[str, str]]  # execution id -> input name -> producing step ('' = none in this run)
    downstream: list[Execution]  # consumers in the same run (transitively)
    other_consumers: list[tuple[str, str]]  # (run id, step) reading the same value in other runs
    other_producers: int
    code: dict[int, str | None]  # execution id -> code hash
    origins: dict[int, tuple[str, str] | None]  # cached execution id -> (run, step) it reused
    note: str = ""
    value_versions: dict[int, dict[str, str]] = field(
        default_factory=dict
    )  # execution id -> libraries in output manifests

    # -- text ------------------------------------------------------------------------------------
    def text(self) -> str:
        a = self.artifact
        lines = [f"{a.name or 'value'}: {a.type or '?'}, {format_size(a.size)}, artifact {a.id}, hash {a.hash[:12]}"]
        if self.note:
            lines.append(f"  ({self.note})")
        if self.producer is None:
            lines.append("  no execution in the index produced it")
        else:
            lines.append(
                f"  from run {self.producer.run_id}, step {self.producer.step}"
                + (
                    f" (also produced by {self.other_producers} other execution{'s' if self.other_producers > 1 else ''})"
                    if self.other_producers
                    else ""
                )
            )
        lines.append("upstream:")
        for ex in self.upstream:
            lines.extend(self._execution_lines(ex))
        if not self.upstream:
            lines.append("  (none)")
        lines.append("downstream:")
        for ex in self.downstream:
            reads = ", ".join(n for n in ex.inputs)
            outs = ", ".join(ex.outputs) or "nothing kept"
            lines.append(f"  step {ex.step} [{ex.state}] reads {reads} -> {outs}")
        for run_id, step in self.other_consumers:
            lines.append(f"  run {run_id} step {step} reads the same value")
        if not self.downstream and not self.other_consumers:
            lines.append("  (no consumer)")
        return "\n".join(lines)

    def _execution_lines(self, ex: Execution) -> list[str]:
        took = f", {ex.duration:.2f} s" if ex.duration is not None else ""
        when = time.strftime(" %Y-%m-%d %H:%M:%S", time.localtime(ex.started)) if ex.started else ""
        code = self.code.get(ex.id)
        cache = "cache hit" if ex.cached else "cache miss"
        origin = self.origins.get(ex.id)
        if ex.cached and origin:
            cache += f" (reused run {origin[0]} step {origin[1]})"
        out = [f"  step {ex.step} [{ex.state}{took}]{when} code {code[:12] if code else '?'} {cache}"]
        if ex.parameters:
            out.append("    parameters: " + ", ".join(f"{k}={v!r}" for k, v in ex.parameters.items()))
        for name, ref in ex.inputs.items():
            src = self.sources.get(ex.id, {}).get(name) or "outside this run"
            out.append(f"    input {name}: {ref.type or '?'}, {format_size(ref.size)}, hash {ref.hash[:12]} <- {src}")
        env = ex.environment
        if env:
            packages = {**self.value_versions.get(ex.id, {}), **(env.get("packages") or {})}
            pkgs = " ".join(f"{k}=={v}" for k, v in sorted(packages.items()))
            out.append(f"    environment: python {env.get('python', '?')}" + (f", {pkgs}" if pkgs else ""))
        return out

    def __repr__(self) -> str:
        return self.text()

    # -- picture ---------------------------------------------------------------------------------
    def svg(self) -> str:
        """Parameters and values (ellipses/boxes) flowing into step executions, top to bottom."""
        nodes: dict[str, tuple[str, str]] = {}  # key -> (label, kind)
        edges: set[tuple[str, str]] = set()
        root = f"a{self.artifact.id}"
        nodes[root] = (self.artifact.name or self.artifact.hash[:8], "root")
        chain = list(reversed(self.upstream)) + self.downstream
        for ex in chain:
            ekey = f"e{ex.id}"
            nodes[ekey] = (ex.step + (" (cached)" if ex.cached else ""), "exec")
            for name, value in ex.parameters.items():
                pkey = f"p{name}={value!r}"
                nodes.setdefault(pkey, (f"{name}={value!r}"[:24], "param"))
                edges.add((pkey, ekey))
            for name, ref in ex.inputs.items():
                akey = f"a{ref.id}"
                nodes.setdefault(akey, (name, "value"))
                edges.add((akey, ekey))
            for name, ref in ex.outputs.items():
                akey = f"a{ref.id}"
                if (
                    akey == root
                    or ex in self.downstream
                    or any(akey == f"a{r.id}" for u in chain for r in u.inputs.values())
                ):
                    nodes.setdefault(akey, (name, "value"))
                    edges.add((ekey, akey))
        return _svg(nodes, edges)

    def _repr_html_(self) -> str:
        return f"<div>{self.svg()}<pre>{html.escape(self.text())}</pre></div>"


def lineage(
    store: Any,
    artifact: ArtifactRef,
    run_id: str | None = None,
    *,
    name: str | None = None,
    note: str = "",
    max_other: int = 20,
) -> Lineage:
    """The lineage of ``artifact``, focused on ``run_id`` (default: the most recent run that produced it)."""
    producers = _events_of(store, artifact.id, "OUTPUT")
    if name:
        artifact.name = name
    mine = [p for p in producers if run_id is None or p[1] == run_id]
    if name:
        mine = [p for p in mine if p[3] == name] or mine
    producer = execution(store, mine[-1][0]) if mine else None
    if producer is not None:
        run_id = producer.run_id
        if not artifact.name:
            artifact.name = mine[-1][3]
    run_execs = executions(store, run_id) if run_id else []
    by_step = {e.step: e for e in run_execs}
    upstream: list[Execution] = []
    sources: dict[int, dict[str, str]] = {}
    if producer is not None:
        seen: set[int] = set()
        frontier = [by_step.get(producer.step, producer)]
        while frontier:
            ex = frontier.pop(0)
            if ex.id in seen:
                continue
            seen.add(ex.id)
            upstream.append(ex)
            sources[ex.id] = {}
            for input_name, ref in ex.inputs.items():
                src = _producer_in_run(run_execs, ex, input_name, ref)
                sources[ex.id][input_name] = src.step if src else ""
                if src is not None:
                    frontier.append(src)
    downstream: list[Execution] = []
    wanted = {artifact.id}
    for ex in run_execs:
        if producer is not None and ex.id <= producer.id:
            continue
        if any(ref.id in wanted for ref in ex.inputs.values()):
            downstream.append(ex)
            wanted.update(ref.id for ref in ex.outputs.values())
    in_run = {e.id for e in run_execs}
    others = [(r, s) for (eid, r, s, _n) in _events_of(store, artifact.id, "INPUT") if eid not in in_run]
    code = {ex.id: step_code_hash(store, ex) for ex in upstream + downstream}
    origins: dict[int, tuple[str, str] | None] = {}
    for ex in upstream:
        if ex.cached and ex.reused_execution:
            original = execution(store, int(ex.reused_execution))
            origins[ex.id] = (original.run_id, original.step) if original else None
    versions = {ex.id: _manifest_versions(store, ex) for ex in upstream}
    return Lineage(
        artifact,
        run_id,
        producer,
        upstream,
        sources,
        downstream,
        others[:max_other],
        max(0, len(producers) - 1) if producer else len(producers),
        code,
        origins,
        note,
        versions,
    )


def _manifest_versions(store: Any, ex: Execution) -> dict[str, str]:
    """Library versions recorded in the manifests of the values an execution wrote."""
    found: dict[str, str] = {}
    for ref in ex.outputs.values():
        try:
            found.update({k: str(v) for k, v in (store.objects.manifest(ref.hash).get("versions") or {}).items() if v})
        except Exception:  # noqa: BLE001 - a collected value has no manifest; lineage still shows
            continue
    return found


def _producer_in_run(run_execs: list[Execution], consumer: Execution, name: str, ref: ArtifactRef) -> Execution | None:
    """The latest earlier execution in the run that output this value under this name (else under any name)."""
    earlier = [e for e in run_execs if e.id < consumer.id]
    for ex in reversed(earlier):
        if name in ex.outputs and ex.outputs[name].id == ref.id:
            return ex
    for ex in reversed(earlier):
        if any(r.id == ref.id for r in ex.outputs.values()):
            return ex
    return None


# ----------------------------------------------------------------------------------------- rendering


_STYLE = {
    # translucent tints: the theme's text colour stays readable on them, in light and dark themes
    "param": ("rgba(249, 168, 37, 0.18)", "#f9a825", 40),
    "value": ("rgba(30, 136, 229, 0.14)", "#1e88e5", 6),
    "root": ("rgba(46, 125, 50, 0.22)", "#2e7d32", 6),
    "exec": ("rgba(142, 36, 170, 0.16)", "#8e24aa", 0),
}


def _svg(nodes: dict[str, tuple[str, str]], edges: set[tuple[str, str]]) -> str:
    from ..dag_svg import Edge, Node, Style, svg

    boxes = [Node(key, label, *_STYLE[kind], bold=kind in ("root", "exec")) for key, (label, kind) in nodes.items()]
    style = Style(box_w=140, box_h=30, gap_x=24, gap_y=40, font_size=11, marker="lin-arrow", node_chars=22)
    return svg(boxes, [Edge(a, b) for a, b in sorted(edges)], style)
