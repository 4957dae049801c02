"""Garbage collection: drop old runs by policy and free the values no kept run or live cache entry refers to.

Reference counting goes through the lineage: a value stays while an execution of a kept run reads or wrote it
(events) or a live cache entry lists it. A cache entry is live while a kept run holds it (the run that made it,
or a run whose cached step reused it). Running runs are always kept; so are values written after the oldest
running run started, and unreferenced values younger than ``grace`` seconds (a run may be about to record them).

The automatic policy is ``<store>/gc.json`` (``{"keep_last": 200, "older_than": "30d", "max_size": "20GB"}``) or
``$NBMAGIC_GC`` (``keep_last=200,older_than=30d,max_size=20GB``, which wins); :func:`auto_gc` applies it.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import units
from ..errors import NbMagicError
from .history import parse_duration
from .lineage import _size
from .runs import RunStore

POLICY_FILE = "gc.json"
ENV = "NBMAGIC_GC"


class GcError(NbMagicError):
    """A gc policy or option that cannot be used."""


def parse_size(text: str | int, option: str = "--max-size") -> int:
    """``500MB``, ``5GB``, ``1.5GiB``, ``1000`` -> bytes."""
    try:
        return units.size_bytes(text)
    except ValueError:
        raise GcError(f"{option} {text!r}: expected a size like 500MB, 5GB or 2GiB") from None


@dataclass
class Policy:
    keep_last: int | None = None
    older_than: float | None = None  # seconds
    max_size: int | None = None  # bytes
    keep_best: bool = True  # keep each experiment's best trial

    def empty(self) -> bool:
        return self.keep_last is None and self.older_than is None and self.max_size is None

    def describe(self) -> str:
        parts = []
        if self.keep_last is not None:
            parts.append(f"keep_last={self.keep_last}")
        if self.older_than is not None:
            parts.append(f"older_than={self.older_than / 86400:g}d")
        if self.max_size is not None:
            parts.append(f"max_size={_size(self.max_size).replace(' ', '')}")
        if not self.keep_best:
            parts.append("keep_best=false")
        return ",".join(parts) or "(no policy)"

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_last": self.keep_last,
            "older_than": self.older_than,
            "max_size": self.max_size,
            "keep_best": self.keep_best,
        }

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "policy") -> Policy:
        unknown = set(data) - {"keep_last", "older_than", "max_size", "keep_best"}
        if unknown:
            raise GcError(
                f"{where}: unknown setting {sorted(unknown)[0]!r} (keep_last, older_than, max_size, keep_best)"
            )
        policy = cls()
        if data.get("keep_last") is not None:
            try:
                policy.keep_last = int(data["keep_last"])
            except (TypeError, ValueError):
                raise GcError(f"{where}: keep_last must be a whole number, not {data['keep_last']!r}") from None
            if policy.keep_last < 0:
                raise GcError(f"{where}: keep_last must be 0 or more")
        if data.get("older_than") is not None:
            value = data["older_than"]
            try:
                policy.older_than = (
                    float(value) if isinstance(value, (int, float)) else parse_duration(value, f"{where}: older_than")
                )
            except NbMagicError as exc:
                raise GcError(str(exc)) from None
        if data.get("max_size") is not None:
            policy.max_size = parse_size(data["max_size"], f"{where}: max_size")
        if data.get("keep_best") is not None:
            policy.keep_best = str(data["keep_best"]).lower() not in ("false", "0", "no")
        return policy


def parse_policy(text: str) -> Policy:
    """``keep_last=100,older_than=30d,max_size=5GB`` -> Policy."""
    data: dict[str, str] = {}
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise GcError(f"gc policy {part!r}: expected NAME=VALUE (keep_last=100, older_than=30d, max_size=5GB)")
        data[key.strip().replace("-", "_")] = value.strip()
    return Policy.from_mapping(data, "gc policy")


def load_policy(store: RunStore) -> Policy | None:
    """The automatic policy: ``$NBMAGIC_GC`` if set, else ``<store>/gc.json``, else None."""
    env = os.environ.get(ENV, "").strip()
    if env:
        return None if env.lower() in ("off", "none") else parse_policy(env)
    path = store.root / POLICY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise GcError(f"{path}: not valid JSON ({exc})") from None
    return Policy.from_mapping(data, str(path))


def save_policy(store: RunStore, policy: Policy | None) -> None:
    """Write (or with None remove) ``<store>/gc.json`` atomically."""
    path = store.root / POLICY_FILE
    if policy is None or policy.empty():
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(policy.to_json(), indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- report


@dataclass
class GcReport:
    dry_run: bool
    policy: Policy
    runs: list[tuple[str, float, str]]  # (run id, started, why)
    values: list[tuple[str, int]]  # (hash, bytes)
    bytes_freed: int
    store_bytes: int  # before
    kept_runs: int
    cache_entries: int
    tmp_removed: int = 0
    notes: list[str] = field(default_factory=list)

    def text(self, limit: int = 30) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"gc ({self.policy.describe()}): {verb} {len(self.runs)} runs, {len(self.values)} values, "
            f"{self.cache_entries} cache entries; {_size(self.bytes_freed)} freed of {_size(self.store_bytes)}; "
            f"{self.kept_runs} runs kept"
        ]
        for run_id, started, why in self.runs[:limit]:
            lines.append(f"  run {run_id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}  {why}")
        if len(self.runs) > limit:
            lines.append(f"  … and {len(self.runs) - limit} more runs")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        head, *rest = self.text().splitlines()
        return f"<div><b>{html.escape(head)}</b><pre>{html.escape(chr(10).join(rest))}</pre></div>"


# ----------------------------------------------------------------------------------------- collect


@contextlib.contextmanager
def _lock(store: RunStore, wait: bool = True) -> Iterator[bool]:
    """One gc at a time per store (across processes); yields False when ``wait`` is off and another holds it."""
    with open(store.root / "gc.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _best_runs(store: RunStore, runs: list[tuple]) -> set[str]:
    best: dict[str, tuple[float, str]] = {}
    goals: dict[str, tuple[str, float] | None] = {}
    for run_id, _started, status, _kind, experiment, metrics in runs:
        if not experiment or status != "done":
            continue
        if experiment not in goals:
            props = store.experiment_properties(experiment) or {}
            goals[experiment] = (
                (props["objective"], 1.0 if props.get("goal", "minimize") == "minimize" else -1.0)
                if props.get("objective")
                else None
            )
        goal = goals[experiment]
        if goal is None:
            continue
        value = json.loads(metrics).get(goal[0])
        if (
            isinstance(value, (int, float))
            and value == value
            and (experiment not in best or goal[1] * value < best[experiment][0])
        ):
            best[experiment] = (goal[1] * value, run_id)
    return {run_id for _, run_id in best.values()}


def collect(
    store: RunStore,
    policy: Policy,
    *,
    dry_run: bool = False,
    keep: Iterable[str] = (),
    grace: float = 60.0,
    now: float | None = None,
) -> GcReport:
    """Apply ``policy``: choose runs to drop, then values nothing kept refers to; ``dry_run`` only reports."""
    with _lock(store):
        return _collect(store, policy, dry_run, set(keep), grace, now or time.time())


def _collect(store: RunStore, policy: Policy, dry_run: bool, keep: set[str], grace: float, now: float) -> GcReport:
    store.mark_torn_runs()
    conn = store._connection()
    runs = conn.execute(
        "SELECT id, started, status, kind, experiment, metrics FROM runs ORDER BY started DESC, id DESC"
    ).fetchall()
    active = {r[0] for r in runs if r[2] in ("running", "pending")}
    protected = active | keep | (_best_runs(store, runs) if policy.keep_best else set())
    doomed: dict[str, str] = {}
    for index, (run_id, started, *_rest) in enumerate(runs):
        if run_id in protected:
            continue
        if policy.keep_last is not None and index >= policy.keep_last:
            doomed[run_id] = f"beyond the last {policy.keep_last}"
        elif policy.older_than is not None and started < now - policy.older_than:
            doomed[run_id] = f"older than {policy.older_than / 86400:g} days"

    # references: run -> artifacts (events), cache entry -> holders and artifacts
    exec_run: dict[int, str] = {}
    key_runs: dict[str, set[str]] = {}
    for eid, run_id, key in conn.execute("SELECT id, run_id, cache_key FROM executions"):
        exec_run[eid] = run_id
        if key:
            key_runs.setdefault(key, set()).add(run_id)
    run_artifacts: dict[str, set[int]] = {}
    for eid, aid in conn.execute("SELECT DISTINCT execution_id, artifact_id FROM events"):
        run_artifacts.setdefault(exec_run.get(eid, ""), set()).add(aid)
    artifacts = {aid: (digest, size or 0) for aid, digest, size in conn.execute("SELECT id, hash, size FROM artifacts")}
    by_hash = {digest: aid for aid, (digest, _s) in artifacts.items()}
    entries: dict[str, tuple[set[str], set[str]]] = {}  # key -> (holder runs, hashes)
    for key, eid, outputs in conn.execute("SELECT key, execution_id, outputs FROM cache"):
        holders = set(key_runs.get(key, ())) | ({exec_run[eid]} if eid in exec_run else set())
        entries[key] = (holders, {ref["hash"] for ref in json.loads(outputs).values()})

    refs: dict[int, int] = {}
    for aids in run_artifacts.values():
        for aid in aids:
            refs[aid] = refs.get(aid, 0) + 1
    cache_refs: dict[str, int] = {}
    holders_of: dict[str, list[str]] = {}
    live_holders: dict[str, int] = {}
    for key, (holders, hashes) in entries.items():
        live_holders[key] = len(holders)
        for run_id in holders:
            holders_of.setdefault(run_id, []).append(key)
        if holders:
            for digest in hashes:
                cache_refs[digest] = cache_refs.get(digest, 0) + 1

    on_disk = set(store.objects.iter_hashes())
    pinned = _active_values(store, active)
    cutoff = min([now - grace] + [r[1] - grace for r in runs if r[0] in active])
    sizes: dict[str, int] = {}

    def size_of(digest: str) -> int:
        if digest not in sizes:
            aid = by_hash.get(digest)
            if aid is not None and artifacts[aid][1]:
                sizes[digest] = artifacts[aid][1]
            else:
                try:
                    sizes[digest] = store.objects.size(digest)
                except Exception:  # noqa: BLE001 - an unreadable object counts as empty
                    sizes[digest] = 0
        return sizes[digest]

    def referenced(digest: str) -> bool:
        aid = by_hash.get(digest)
        return bool((aid is not None and refs.get(aid, 0) > 0) or cache_refs.get(digest, 0) > 0 or digest in pinned)

    freed: set[str] = set()
    dead_keys: set[str] = {k for k, v in live_holders.items() if v == 0}

    def drop(run_id: str) -> None:
        for aid in run_artifacts.get(run_id, ()):
            refs[aid] -= 1
            digest = artifacts[aid][0]
            if refs[aid] == 0 and digest in on_disk and not referenced(digest) and _old_enough(store, digest, cutoff):
                freed.add(digest)
        for key in holders_of.get(run_id, ()):
            live_holders[key] -= 1
            if live_holders[key] == 0:
                dead_keys.add(key)
                for digest in entries[key][1]:
                    cache_refs[digest] -= 1
                    if digest in on_disk and not referenced(digest) and _old_enough(store, digest, cutoff):
                        freed.add(digest)

    # values no run or cache entry refers to at all (a torn run's, or left by an interrupted gc)
    for digest in on_disk:
        if not referenced(digest) and _old_enough(store, digest, cutoff):
            freed.add(digest)
    for run_id in doomed:
        drop(run_id)
    store_bytes = sum(size_of(d) for d in on_disk)
    if policy.max_size is not None:
        remaining = store_bytes - sum(size_of(d) for d in freed)
        for run_id, _started, *_ in reversed(runs):  # oldest first
            if remaining <= policy.max_size:
                break
            if run_id in doomed or run_id in protected:
                continue
            before = set(freed)
            doomed[run_id] = f"store over {_size(policy.max_size)}"
            drop(run_id)
            remaining -= sum(size_of(d) for d in freed - before)
    report = GcReport(
        dry_run,
        policy,
        [(r[0], r[1], doomed[r[0]]) for r in reversed(runs) if r[0] in doomed],
        sorted((d, size_of(d)) for d in freed),
        sum(size_of(d) for d in freed),
        store_bytes,
        len(runs) - len(doomed),
        len(dead_keys),
    )
    if dry_run:
        return report
    _apply(store, report, set(doomed), dead_keys, {by_hash[d] for d in freed if d in by_hash}, key_runs, exec_run)
    report.tmp_removed = store.objects.sweep_tmp()
    return report


def _old_enough(store: RunStore, digest: str, cutoff: float) -> bool:
    """Written before ``cutoff`` (a value newer than that may belong to a run that has not recorded it yet)."""
    try:
        return os.stat(store.objects._path(digest)).st_mtime < cutoff
    except FileNotFoundError:
        return False


def _active_values(store: RunStore, active: set[str]) -> set[str]:
    """Values running runs hold but may not have indexed yet: finished steps' result files and step inputs."""
    found: set[str] = set()
    for run_id in active:
        folder = store.root / "runs" / run_id
        if not folder.is_dir():
            continue
        for path in folder.glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path.name.endswith(".result.json"):
                found.update(ref.get("hash", "") for ref in (data.get("outputs") or {}).values())
            elif path.name.endswith(".spec.json"):
                found.update((data.get("inputs") or {}).values())
    return found


def _apply(
    store: RunStore,
    report: GcReport,
    doomed: set[str],
    dead_keys: set[str],
    dead_artifacts: set[int],
    key_runs: dict[str, set[str]],
    exec_run: dict[int, str],
) -> None:
    """Remove the index rows first (one transaction), then the values and run folders."""
    from .lineage import execution, step_code_hash

    conn = store._connection()
    doomed_execs = {eid for eid, run_id in exec_run.items() if run_id in doomed}
    # kept cached steps that reused a dropped execution keep its code hash (its spec file is about to go)
    updates = []
    for eid, props, _chash in conn.execute(
        "SELECT id, properties, code_hash FROM executions WHERE cached=1 AND code_hash IS NULL"
    ):
        if eid in doomed_execs:
            continue
        reused = json.loads(props or "{}").get("reused_execution")
        if reused in doomed_execs:
            original = execution(store, int(reused))
            digest = step_code_hash(store, original) if original else None
            if digest:
                updates.append((digest, eid))
    with store._db() as db:
        if updates:
            db.executemany("UPDATE executions SET code_hash=? WHERE id=?", updates)
        db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_runs(id TEXT PRIMARY KEY)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_execs(id INTEGER PRIMARY KEY)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_artifacts(id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM gc_runs")
        db.execute("DELETE FROM gc_execs")
        db.execute("DELETE FROM gc_artifacts")
        db.executemany("INSERT INTO gc_runs VALUES (?)", [(r,) for r in doomed])
        db.executemany("INSERT INTO gc_execs VALUES (?)", [(e,) for e in doomed_execs])
        db.executemany("INSERT INTO gc_artifacts VALUES (?)", [(a,) for a in dead_artifacts])
        # a run that started meanwhile may have recorded one of these values: it stays
        db.execute(
            "DELETE FROM gc_artifacts WHERE id IN (SELECT artifact_id FROM events WHERE execution_id NOT IN gc_execs)"
        )
        # live cache entries made by a dropped execution now point at a kept run's execution with the same key
        for key, _eid in conn.execute("SELECT key, execution_id FROM cache WHERE execution_id IN gc_execs").fetchall():
            if key in dead_keys:
                continue
            kept = db.execute(
                "SELECT id FROM executions WHERE cache_key=? AND id NOT IN gc_execs AND state IN ('done','cached')"
                " ORDER BY id LIMIT 1",
                (key,),
            ).fetchone()
            if kept:
                db.execute("UPDATE cache SET execution_id=? WHERE key=?", (kept[0], key))
        db.executemany("DELETE FROM cache WHERE key=?", [(k,) for k in dead_keys])
        db.execute("DELETE FROM events WHERE execution_id IN gc_execs")
        db.execute("DELETE FROM associations WHERE execution_id IN gc_execs")
        db.execute(
            "DELETE FROM attributions WHERE context_id IN (SELECT id FROM contexts WHERE type='run' AND name IN gc_runs)"
        )
        db.execute("DELETE FROM contexts WHERE type='run' AND name IN gc_runs")
        db.execute("DELETE FROM executions WHERE id IN gc_execs")
        db.execute("DELETE FROM runs WHERE id IN gc_runs")
        db.execute("DELETE FROM attributions WHERE artifact_id IN gc_artifacts")
        db.execute("DELETE FROM artifacts WHERE id IN gc_artifacts")
        rescued = {
            row[0] for row in db.execute("SELECT hash FROM artifacts WHERE id IN (SELECT artifact_id FROM events)")
        }
    freed_hashes = [(d, s) for d, s in report.values if d not in rescued]
    if len(freed_hashes) != len(report.values):
        report.notes.append(
            f"{len(report.values) - len(freed_hashes)} values were kept: a run started meanwhile uses them"
        )
        report.values = freed_hashes
        report.bytes_freed = sum(s for _, s in freed_hashes)
    for digest, _ in freed_hashes:
        store.objects.delete(digest)
    runs_dir = store.root / "runs"
    for run_id in doomed:
        if run_id and "/" not in run_id and run_id not in (".", ".."):
            shutil.rmtree(runs_dir / run_id, ignore_errors=True)


# ----------------------------------------------------------------------------------------- automatic


def auto_gc(store: RunStore | None = None) -> GcReport | None:
    """Apply the configured policy if the store is over it; cheap when there is nothing to do.

    Call at the end of a run. Returns None when no policy is set, nothing is over it, or another process is
    collecting right now.
    """
    store = store or RunStore()
    policy = load_policy(store)
    if policy is None or policy.empty():
        return None
    conn = store._connection()
    count, oldest = conn.execute("SELECT COUNT(*), MIN(started) FROM runs").fetchone()
    over = (policy.keep_last is not None and count > policy.keep_last) or (
        policy.older_than is not None and oldest is not None and oldest < time.time() - policy.older_than
    )
    if not over and policy.max_size is not None:
        total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM artifacts").fetchone()[0]
        over = total > policy.max_size
    if not over:
        return None
    with _lock(store, wait=False) as got:
        if not got:
            return None
        return _collect(store, policy, False, set(), 60.0, time.time())
