"""Run history: list, filter (``val_loss<0.3``, parsed, never eval'd), sort and compare runs of the index."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import units
from ..errors import NbMagicError
from .runs import RunRecord, RunStore


class HistoryError(NbMagicError):
    """A --where / --sort expression or a run reference that cannot be used."""


BUILTIN = (
    "id",
    "pipeline",
    "status",
    "kind",
    "experiment",
    "notebook",
    "started",
    "ended",
    "duration",
    "steps",
    "cached",
    "age",
)
_COND = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|!=|==|=|<|>|~)\s*(.*?)\s*$")


def parse_duration(text: str, option: str = "duration") -> float:
    """``90``, ``30s``, ``15m``, ``2h``, ``1h30m``, ``7d``, ``1w`` -> seconds."""
    try:
        return units.duration_seconds(str(text))
    except ValueError:
        raise HistoryError(f"{option} {text!r}: expected a number with s, m, h, d or w (e.g. 30d)") from None


# ----------------------------------------------------------------------------------------- --where


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any  # float, str or bool

    def test(self, record: RunRecord, now: float) -> bool:
        actual = field_value(record, self.field, now)
        if actual is None:
            return False
        expected = self.value
        if self.op == "~":
            return str(expected).lower() in str(actual).lower()
        if isinstance(actual, bool) or isinstance(expected, bool):
            if self.op not in ("=", "==", "!="):
                return False
            equal = str(actual).lower() == str(expected).lower()
            return equal if self.op != "!=" else not equal
        if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
            a, b = float(actual), float(expected)
        elif isinstance(actual, (int, float)) or isinstance(expected, (int, float)):
            if self.op in ("=", "=="):
                return False
            if self.op == "!=":
                return True
            return False  # a number and a string are not ordered
        else:
            a, b = str(actual), str(expected)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a == b, "==": a == b, "!=": a != b}[self.op]


def parse_where(text: str | Iterable[str] | None) -> list[Condition]:
    """``"val_loss<0.3, lr>=0.01 and status=done"`` -> conditions (all must hold)."""
    if not text:
        return []
    pieces: list[str] = []
    for chunk in [text] if isinstance(text, str) else list(text):
        chunk = chunk.strip()
        for part in re.split(r",|\s+and\s+", chunk, flags=re.IGNORECASE):
            if part.strip():
                pieces.append(part)
    return [_condition(piece) for piece in pieces]


def _condition(text: str) -> Condition:
    match = _COND.match(text)
    if not match or not match.group(3) or match.group(3)[0] in "<>=!~":
        raise HistoryError(
            f"--where {text.strip()!r}: expected NAME OP VALUE with OP one of < <= > >= = != ~ (e.g. val_loss<0.3)"
        )
    name, op, raw = match.groups()
    return Condition(name, op, _literal(name, raw))


def _literal(name: str, raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    key = name[4:] if name.startswith("run.") else name
    if key in ("duration", "age"):
        return parse_duration(raw, f"--where {name}")
    if key in ("started", "ended"):
        return _timestamp(raw)
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return float(raw)
    except ValueError:
        return raw


def _timestamp(raw: str) -> float:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(raw, fmt))
        except ValueError:
            continue
    raise HistoryError(f"--where: {raw!r} is not a date (YYYY-MM-DD or YYYY-MM-DD HH:MM)")


def field_value(record: RunRecord, name: str, now: float | None = None) -> Any:
    """A run's value for a --where/--sort field: ``metric.X``, ``param.X``, ``run.COLUMN``, or a bare name
    (a metric, else a parameter, else a run column such as status, duration, age)."""
    prefix, dot, rest = name.partition(".")
    if dot and prefix in ("param", "params", "parameters", "p"):
        return record.parameters.get(rest)
    if dot and prefix in ("metric", "metrics", "m"):
        return record.metrics.get(rest)
    if dot and prefix == "run":
        name = rest
    elif name in record.metrics:
        return record.metrics[name]
    elif name in record.parameters:
        return record.parameters[name]
    if name in BUILTIN:
        if name == "duration":
            return record.duration
        if name == "age":
            return (now or time.time()) - record.started
        return getattr(record, name)
    return None


# ----------------------------------------------------------------------------------------- query


def sort_keys(text: str | None) -> list[tuple[str, bool]]:
    """``"-started"`` / ``"val_loss,-duration"`` -> [(field, descending)]."""
    keys = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        descending = part.startswith("-")
        name = part.lstrip("+-")
        if not re.fullmatch(r"[A-Za-z_][\w.\-]*", name):
            raise HistoryError(f"--sort {part!r}: expected a field name, '-' in front for descending")
        keys.append((name, descending))
    return keys


def query(
    store: RunStore,
    where: str | Iterable[str] | None = None,
    sort: str | None = None,
    limit: int | None = None,
    *,
    pipeline: str | None = None,
    experiment: str | None = None,
) -> tuple[list[RunRecord], int]:
    """Runs matching every condition, sorted (default newest first); returns (runs up to ``limit``, total matching)."""
    conditions = parse_where(where)
    keys = sort_keys(sort) or [("started", True)]
    now = time.time()
    every = store.list_runs(pipeline=pipeline, experiment=experiment)
    for option, names in (("--where", [c.field for c in conditions]), ("--sort", [k for k, _ in keys])):
        for name in names:
            _check_field(every, name, option, now)
    records = [r for r in every if all(c.test(r, now) for c in conditions)]
    for name, descending in reversed(keys):  # stable sorts, last key first; missing values always last
        present = [r for r in records if _sortable(field_value(r, name, now)) is not None]
        missing = [r for r in records if _sortable(field_value(r, name, now)) is None]
        present.sort(key=lambda r: _sortable(field_value(r, name, now)), reverse=descending)
        records = present + missing
    total = len(records)
    if limit is not None and limit > 0:
        records = records[:limit]
    return records, total


def _check_field(records: list[RunRecord], name: str, option: str, now: float) -> None:
    """A field no run has is a typo: name it (a filter on it would match nothing, a sort would do nothing)."""
    if (
        not records
        or (name.partition(".")[2] or name) in BUILTIN
        and not name.startswith(("param", "p.", "metric", "m."))
    ):
        return
    if any(field_value(r, name, now) is not None for r in records):
        return
    metrics = sorted({k for r in records for k in r.metrics})
    params = sorted({k for r in records for k in r.parameters})
    raise HistoryError(
        f"{option} {name!r}: no run has a metric or parameter {name!r} "
        f"(metrics: {', '.join(metrics) or 'none'}; parameters: {', '.join(params) or 'none'})"
    )


def _sortable(value: Any) -> tuple[int, Any] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


# ----------------------------------------------------------------------------------------- table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _duration(record: RunRecord) -> str:
    return f"{record.duration:.2f} s" if record.duration is not None else ""


@dataclass
class RunTable:
    """``%runs``' result: a text table in a terminal, an HTML table in a notebook."""

    runs: list[RunRecord]
    total: int
    columns: tuple[str, ...] = ("id", "pipeline", "status", "parameters", "metrics", "duration", "cached", "started")

    def rows(self) -> list[list[str]]:
        out = []
        for r in self.runs:
            cells = {
                "id": r.id + ("" if r.kind == "local" else f" ({r.kind})"),
                "pipeline": r.pipeline,
                "status": r.status,
                "parameters": _pairs(r.parameters),
                "metrics": _pairs(r.metrics),
                "duration": _duration(r),
                "cached": f"{r.cached}/{r.steps}",
                "started": _when(r.started),
            }
            out.append([cells[c] for c in self.columns])
        return out

    def more(self) -> str:
        hidden = self.total - len(self.runs)
        return f"{hidden} more runs (use --limit N, 0 for all)" if hidden > 0 else ""

    def text(self, max_width: int = 48) -> str:
        if not self.runs:
            return "no runs" + (" match" if self.total == 0 else "")
        rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in self.rows()]
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(self.columns)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(self.columns, widths)).rstrip()]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        if self.more():
            lines.append(self.more())
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in self.columns)
        body = []
        for row in self.rows():
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row) + "</tr>")
        more = f"<div>{html.escape(self.more())}</div>" if self.more() else ""
        return f"<div><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}</div>"

    def to_records(self) -> list[dict[str, Any]]:
        return [
            dict(
                id=r.id,
                pipeline=r.pipeline,
                status=r.status,
                kind=r.kind,
                parameters=r.parameters,
                metrics=r.metrics,
                started=r.started,
                ended=r.ended,
                duration=r.duration,
                steps=r.steps,
                cached=r.cached,
                experiment=r.experiment,
                error=r.error,
            )
            for r in self.runs
        ]


# ----------------------------------------------------------------------------------------- compare


@dataclass
class StepDiff:
    step: str
    a: str  # state in A ('' if absent)
    b: str
    code_differs: bool
    key_differs: bool  # cache key: code, parameters, inputs or versions
    values: list[str] = field(default_factory=list)  # assigned values whose content differs


@dataclass
class Comparison:
    a: RunRecord
    b: RunRecord
    parameters: dict[str, tuple[Any, Any]]
    metrics: dict[str, tuple[Any, Any]]
    steps: list[StepDiff]

    def text(self) -> str:
        lines = [
            f"A = {self.a.id} ({self.a.pipeline}, {self.a.status})",
            f"B = {self.b.id} ({self.b.pipeline}, {self.b.status})",
        ]
        lines.append("parameters:" if self.parameters else "parameters: same")
        for k, (x, y) in self.parameters.items():
            lines.append(f"  {k}: {_fmt(x) if x is not None else '—'} -> {_fmt(y) if y is not None else '—'}")
        lines.append("metrics:" if self.metrics else "metrics: same")
        for k, (x, y) in self.metrics.items():
            delta = f"  ({y - x:+.4g})" if isinstance(x, (int, float)) and isinstance(y, (int, float)) else ""
            lines.append(f"  {k}: {_fmt(x) if x is not None else '—'} -> {_fmt(y) if y is not None else '—'}{delta}")
        lines.append("steps:")
        for s in self.steps:
            lines.append(f"  {s.step}: {self._step_note(s)}")
        return "\n".join(lines)

    @staticmethod
    def _step_note(s: StepDiff) -> str:
        if not s.a or not s.b:
            return f"only in {'B' if not s.a else 'A'}"
        notes = []
        if s.code_differs:
            notes.append("code differs")
        elif s.key_differs:
            notes.append("same code; inputs, parameters or package versions differ")
        if s.values:
            notes.append("values differ: " + ", ".join(s.values))
        if s.a != s.b:
            notes.append(f"{s.a} -> {s.b}")
        return "; ".join(notes) or "same"

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        def table(title: str, diffs: dict[str, tuple[Any, Any]]) -> str:
            if not diffs:
                return f"<div>{title}: same</div>"
            rows = "".join(
                f"<tr><td style='text-align:left'>{html.escape(k)}</td><td>{html.escape(_fmt(x) if x is not None else '—')}</td>"
                f"<td>{html.escape(_fmt(y) if y is not None else '—')}</td></tr>"
                for k, (x, y) in diffs.items()
            )
            return f"<div>{title}<table><thead><tr><th></th><th>A</th><th>B</th></tr></thead><tbody>{rows}</tbody></table></div>"

        steps = "".join(
            f"<tr><td style='text-align:left'>{html.escape(s.step)}</td><td style='text-align:left'>"
            f"{html.escape(self._step_note(s))}</td></tr>"
            for s in self.steps
        )
        return (
            f"<div><b>A</b> {html.escape(self.a.id)} · <b>B</b> {html.escape(self.b.id)}"
            f"{table('parameters', self.parameters)}{table('metrics', self.metrics)}"
            f"<div>steps<table><tbody>{steps}</tbody></table></div></div>"
        )


def compare(store: RunStore, a: str, b: str, resolve: Callable[[str], str] | None = None) -> Comparison:
    """Parameter and metric differences between two runs, and which steps' code or values differed."""
    from .lineage import executions, step_code_hash

    resolve = resolve or store.resolve_run
    ra, rb = store.get_run(resolve(a)), store.get_run(resolve(b))
    assert ra is not None and rb is not None
    params = _diff(ra.parameters, rb.parameters)
    metrics = _diff(ra.metrics, rb.metrics)
    ea = {e.step: e for e in executions(store, ra.id)}
    eb = {e.step: e for e in executions(store, rb.id)}
    steps = []
    for name in list(ea) + [n for n in eb if n not in ea]:
        x, y = ea.get(name), eb.get(name)
        if x is None or y is None:
            steps.append(StepDiff(name, x.state if x else "", y.state if y else "", False, False))
            continue
        ca, cb = step_code_hash(store, x), step_code_hash(store, y)
        values = sorted(
            n
            for n in set(x.outputs) | set(y.outputs)
            if (x.outputs.get(n).hash if n in x.outputs else None)
            != (y.outputs.get(n).hash if n in y.outputs else None)
        )
        steps.append(
            StepDiff(
                name,
                x.state,
                y.state,
                bool(ca and cb and ca != cb),
                bool(x.cache_key and y.cache_key and x.cache_key != y.cache_key),
                values,
            )
        )
    return Comparison(ra, rb, params, metrics, steps)


def _diff(x: dict[str, Any], y: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (x.get(k), y.get(k)) for k in list(x) + [k for k in y if k not in x] if x.get(k) != y.get(k)}


# ----------------------------------------------------------------------------------------- cluster runs


def record_cluster_run(
    store: RunStore,
    run: Any,
    pipeline: str,
    parameters: dict[str, Any],
    steps: Iterable[str] = (),
    experiment: str | None = None,
) -> str:
    """Index a submitted cluster run (``nbmagic.run.cluster.ClusterRun``) so ``%runs`` lists it."""
    return store.create_run(
        pipeline,
        parameters,
        list(steps),
        experiment=experiment,
        kind="cluster",
        run_id=run.id,
        url=getattr(run, "url", None),
    )


def dumps(table: RunTable) -> str:
    """The table as JSON (for ``nbmagic runs --json``)."""
    return json.dumps(table.to_records(), indent=1, default=str)
