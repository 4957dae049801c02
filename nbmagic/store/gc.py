"""Garbage collection: drop old runs by policy and free the values no kept run or live cache entry refers to.

Reference counting goes through the lineage: a value stays while an execution of a kept run reads or wrote it
(events) or a live cache entry lists it. A cache entry is live while a kept run holds it (the run that made it,
or a run whose cached step reused it). Running runs are always kept, and so are "lost" ones (a shared run whose heartbeat
stopped: maybe dead, maybe only slow between steps) for ``LOST_KEEP_S`` (24 h) after their last heartbeat or step
end, and any shared run whose heartbeat is fresh whatever its status; after that
the policy may drop them, with a line naming them. Values written after the oldest running run started, and unreferenced values younger than ``grace`` seconds (a run may be about to record them).

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
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import units
from ..errors import NbMagicError
from ..units import format_size
from .history import parse_duration
from .lockfiles import sweep_flights
from .objects import move_or_remove, remove_tree
from .runs import RunStore

LOST_KEEP_S = 24 * 3600.0  # a "lost" run is kept this long after it started: it may only be slow
POLICY_FILE = "gc.json"
LOCK_FILE = "gc.lock"
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
            parts.append(f"max_size={format_size(self.max_size).replace(' ', '')}")
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
    flights_removed: int = 0  # single-flight lock files no step holds, old failure records
    notes: list[str] = field(default_factory=list)
    over_budget: str | None = None  # one line when --max-size cannot be met

    def text(self, limit: int = 30) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"gc ({self.policy.describe()}): {verb} {len(self.runs)} runs, {len(self.values)} values, "
            f"{self.cache_entries} cache entries; {format_size(self.bytes_freed)} freed of {format_size(self.store_bytes)}; "
            f"{self.kept_runs} runs kept"
        ]
        for run_id, started, why in self.runs[:limit]:
            lines.append(f"  run {run_id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}  {why}")
        if len(self.runs) > limit:
            lines.append(f"  … and {len(self.runs) - limit} more runs")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.over_budget:
            lines.append(self.over_budget)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        head, *rest = self.text().splitlines()
        return f"<div><b>{html.escape(head)}</b><pre>{html.escape(chr(10).join(rest))}</pre></div>"


# ----------------------------------------------------------------------------------------- collect


@contextlib.contextmanager
def _lock(store: RunStore, wait: bool = True) -> Iterator[bool]:
    """One gc at a time per store (across processes); yields False when ``wait`` is off and another holds it.

    Live runs take the same lock shared while they write or re-find a value (:meth:`ObjectStore.put`), so a
    value a run is about to record is never judged unreferenced and deleted between the two.
    """
    fd = os.open(store.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    with open(fd, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def collect(
    store: RunStore,
    policy: Policy,
    *,
    dry_run: bool = False,
    keep: Iterable[str] = (),
    grace: float = 60.0,
    now: float | None = None,
    shared: bool = False,
) -> GcReport:
    """Apply ``policy``: choose runs to drop, then values nothing kept refers to; ``dry_run`` only reports.

    Never collected, by any policy: running runs, the newest run of each pipeline, each experiment's best
    trial (:meth:`RunStore.best_trial`, unless ``keep_best`` is off) and ``keep``; nor a value a live run
    wrote or re-found (see :func:`lease`). A run whose values cannot be freed yet keeps its record.
    With ``shared`` and a shared store configured, the policy covers the team's runs and is applied there too
    (:mod:`nbmagic.store.shared_gc`).
    """
    if shared and store.remote is not None:
        from .shared_gc import survey, sweep

        with store.remote.lease("gc"):
            store.remote.sync(store)  # a sync that fails stops the gc: its index would miss runs
            surveyed = survey(store)  # what can stop the shared sweep stops it before anything is applied
            from .remote import LEASE_S

            ages, clock = store.remote.signs_of_life(), time.time()
            beats = {run_id: (clock - age, age <= LEASE_S) for run_id, age in ages.items()}
            with _lock(store):
                report = _collect(store, policy, dry_run, set(keep), grace, now or time.time(), beats)
            dropped = {run_id for run_id, *_ in report.runs}
            try:
                swept = sweep(store, dropped, dry_run, grace, surveyed)
            except BaseException:  # e.g. the network: the next sync brings back the runs whose records remain
                if not dry_run:
                    store.forget_remote_runs(str(store.remote.uri), dropped)
                raise
            report.notes.append(swept.line(str(store.remote.uri), dry_run))
            return report
    with _lock(store):
        return _collect(store, policy, dry_run, set(keep), grace, now or time.time())


def _collect(
    store: RunStore,
    policy: Policy,
    dry_run: bool,
    keep: set[str],
    grace: float,
    now: float,
    beats: dict[str, tuple[float, bool]] | None = None,
    copies_only: frozenset[str] | set[str] = frozenset(),
) -> GcReport:
    """``beats``: run id -> (when its shared heartbeat, ``live/``, was last written, whether that is fresh), when
    gc covers a shared store. ``copies_only``: runs whose records are in the shared store; when the policy
    drops one, only this home's copies of its values go (a restore pulls them again), its index rows stay."""
    store.mark_torn_runs()
    snap = store.gc_snapshot()
    runs = snap.runs
    beats = beats or {}
    ends = store.last_step_ends()
    active = {r[0] for r in runs if r[2] in ("running", "pending")}
    active |= {run_id for run_id, (_, fresh) in beats.items() if fresh}  # a fresh heartbeat: whatever its status

    def last_life(run_id: str, started: float) -> float:
        """The latest sign of life of a run: its start, its last step's end, its heartbeat."""
        times = [started, ends.get(run_id) or 0.0]
        if run_id in beats:
            times.append(beats[run_id][0])
        return max(times)

    active |= {r[0] for r in runs if r[2] == "lost" and last_life(r[0], r[1] or 0) > now - LOST_KEEP_S}
    newest = store.newest_runs()
    best = store.best_trials() if policy.keep_best else set()
    why_kept: dict[str, str] = {}
    for label, ids in (
        ("kept on request", keep),
        ("the best trial", best),
        ("the newest", newest),
        ("running", active),
    ):
        for run_id in ids:
            why_kept[run_id] = label
    protected = set(why_kept)
    doomed: dict[str, str] = {}
    wanted: dict[str, str] = {}
    for index, (run_id, started, *_rest) in enumerate(runs):
        if run_id in protected:
            continue
        if policy.keep_last is not None and index >= policy.keep_last:
            wanted[run_id] = f"beyond the last {policy.keep_last}"
        elif policy.older_than is not None and started < now - policy.older_than:
            wanted[run_id] = f"older than {policy.older_than / 86400:g} days"

    # references: run -> artifacts (events), cache entry -> holders and artifacts
    exec_run: dict[int, str] = {}
    key_runs: dict[str, set[str]] = {}
    for eid, run_id, key in snap.executions:
        exec_run[eid] = run_id
        if key:
            key_runs.setdefault(key, set()).add(run_id)
    run_artifacts: dict[str, set[int]] = {}
    for eid, aid in snap.events:
        run_artifacts.setdefault(exec_run.get(eid, ""), set()).add(aid)
    artifacts = {aid: (digest, size or 0) for aid, digest, size in snap.artifacts}
    by_hash = {digest: aid for aid, (digest, _s) in artifacts.items()}
    entries: dict[str, tuple[set[str], set[str]]] = {}  # key -> (holder runs, hashes)
    for key, eid, outputs in snap.cache:
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

    def unreferenced(digest: str, less_refs: dict[int, int], less_cache: dict[str, int]) -> bool:
        aid = by_hash.get(digest)
        run_refs = refs.get(aid, 0) - less_refs.get(aid, 0) if aid is not None else 0
        return run_refs <= 0 and cache_refs.get(digest, 0) - less_cache.get(digest, 0) <= 0 and digest not in pinned

    def effect(run_id: str) -> tuple[set[str], set[str], list[str]]:
        """What dropping the run would do: (values freed, values left unreferenced but too young, dead cache keys)."""
        less_refs: dict[int, int] = {}
        for aid in run_artifacts.get(run_id, ()):
            less_refs[aid] = less_refs.get(aid, 0) + 1
        less_cache: dict[str, int] = {}
        keys = [k for k in holders_of.get(run_id, ()) if live_holders[k] == 1]
        for key in keys:
            for digest in entries[key][1]:
                less_cache[digest] = less_cache.get(digest, 0) + 1
        touched = {artifacts[aid][0] for aid in less_refs} | set(less_cache)
        gone = {d for d in touched if d in on_disk and d not in freed and unreferenced(d, less_refs, less_cache)}
        young = {d for d in gone if not _old_enough(store, d, cutoff)}
        return gone - young, young, keys

    def drop(run_id: str, why: str, keys: list[str], values: set[str]) -> None:
        doomed[run_id] = why
        for aid in run_artifacts.get(run_id, ()):
            refs[aid] -= 1
        for key in holders_of.get(run_id, ()):
            live_holders[key] -= 1
        for key in keys:
            dead_keys.add(key)
            for digest in entries[key][1]:
                cache_refs[digest] -= 1
        freed.update(values)

    freed: set[str] = set()
    dead_keys: set[str] = {k for k, v in live_holders.items() if v == 0}
    deferred: set[str] = set()
    # values no run or cache entry refers to at all (a torn run's, or left by an interrupted gc)
    for digest in on_disk:
        if unreferenced(digest, {}, {}) and _old_enough(store, digest, cutoff):
            freed.add(digest)
    for run_id, why in wanted.items():  # asked for by count or age: values too young to free go on a later gc
        values, _young, keys = effect(run_id)
        drop(run_id, why, keys, values)
    store_bytes = sum(size_of(d) for d in on_disk)
    remaining = store_bytes - sum(size_of(d) for d in freed)
    if policy.max_size is not None:
        for run_id, _started, *_ in reversed(runs):  # oldest first
            if remaining <= policy.max_size:
                break
            if run_id in doomed or run_id in protected:
                continue
            values, young, keys = effect(run_id)
            if young:  # dropping the record now would not free its bytes: it stays with them
                deferred.add(run_id)
                continue
            if not values:
                continue  # dropping the record would free nothing (its values are shared with kept runs)
            drop(run_id, f"store over {format_size(policy.max_size)}", keys, values)
            remaining -= sum(size_of(d) for d in values)
    deferred -= set(doomed)
    copies = {run_id for run_id in doomed if run_id in copies_only}
    for run_id in copies:  # the shared store keeps their records and values: here the rows stay
        del doomed[run_id]
    still = {artifacts[aid][0] for run_id in copies for aid in run_artifacts.get(run_id, ())}
    dead_keys -= {key for run_id in copies for key in holders_of.get(run_id, ())}
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
    lost = sorted(r[0] for r in runs if r[0] in doomed and r[2] == "lost")
    if lost:
        report.notes.append(
            f"{_count(len(lost), 'lost run')} ({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''}) started over"
            f" {LOST_KEEP_S / 3600:g} h ago with no heartbeat or step since: {'would be' if dry_run else 'were'} dropped by"
            " the policy"
        )
    if deferred:
        report.notes.append(
            f"{_count(len(deferred), 'run')} kept for now: {'its' if len(deferred) == 1 else 'their'} values are"
            f" younger than {grace:g} s (a later gc frees them)"
        )
    if policy.max_size is not None and remaining > policy.max_size:
        report.over_budget = _over_budget(remaining, policy.max_size, runs, doomed, why_kept, deferred, grace)
    if copies:
        report.notes.append(
            f"{_count(len(copies), 'run')} of the shared store {'stay' if len(copies) > 1 else 'stays'} listed:"
            f" only this home's copies of {'their' if len(copies) > 1 else 'its'} values"
            f" {'would go' if dry_run else 'went'} (a restore pulls them again)"
        )
    if dry_run:
        return report
    dead = {by_hash[d] for d in freed if d in by_hash and d not in still}
    _apply(store, report, snap, set(doomed), dead_keys, dead, exec_run, still)
    report.tmp_removed = store.objects.sweep_tmp()
    report.flights_removed = sweep_flights(store.root)
    return report


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _over_budget(
    remaining: int,
    budget: int,
    runs: list[tuple],
    doomed: dict[str, str],
    why_kept: dict[str, str],
    deferred: set[str],
    grace: float,
) -> str:
    """One line: how far over the budget the store stays, and why the rest cannot go."""
    reasons: dict[str, int] = {}
    for run_id, *_ in runs:
        if run_id in doomed:
            continue
        if run_id in why_kept:
            reasons[why_kept[run_id]] = reasons.get(why_kept[run_id], 0) + 1
        elif run_id in deferred:
            reasons["young"] = reasons.get("young", 0) + 1
        else:
            reasons["shared"] = reasons.get("shared", 0) + 1
    parts = []
    for label in ("the newest", "running", "the best trial", "kept on request"):
        n = reasons.get(label, 0)
        if n:
            parts.append(f"{_count(n, 'run')} {'is' if n == 1 else 'are'} protected ({label})")
    if reasons.get("young"):
        n = reasons["young"]
        parts.append(f"{_count(n, 'run')} {'has' if n == 1 else 'have'} values younger than {grace:g} s")
    if reasons.get("shared"):
        n = reasons["shared"]
        parts.append(f"{_count(n, 'run')} only {'shares' if n == 1 else 'share'} values with kept runs")
    why = "; ".join(parts) or "the remaining values belong to no run that may be dropped"
    return f"gc: {format_size(remaining)} kept over the {format_size(budget)} budget: {why}"


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
    snap: Any,
    doomed: set[str],
    dead_keys: set[str],
    dead_artifacts: set[int],
    exec_run: dict[int, str],
    copies: set[str] = frozenset(),
) -> None:
    """Remove the index rows first (one transaction), then the values and run folders. ``copies``: values
    whose index rows stay (runs of the shared store), removed from this home only."""
    from .lineage import execution, step_code_hash

    doomed_execs = {eid for eid, run_id in exec_run.items() if run_id in doomed}
    # kept cached steps that reused a dropped execution keep its code hash (its spec file is about to go)
    updates = []
    for eid, props in snap.reused:
        if eid in doomed_execs:
            continue
        reused = json.loads(props or "{}").get("reused_execution")
        if reused in doomed_execs:
            original = execution(store, int(reused))
            digest = step_code_hash(store, original) if original else None
            if digest:
                updates.append((digest, eid))
    rescued = store.gc_remove(doomed, doomed_execs, dead_artifacts, dead_keys, updates) - copies
    freed_hashes = [(d, s) for d, s in report.values if d not in rescued]
    if len(freed_hashes) != len(report.values):
        report.notes.append(
            f"{len(report.values) - len(freed_hashes)} values were kept: a run started meanwhile uses them"
        )
        report.values = freed_hashes
        report.bytes_freed = sum(s for _, s in freed_hashes)
    unmoved = remove_files(store, [d for d, _ in freed_hashes], doomed)
    if unmoved:
        report.notes.append(_unmoved_note(unmoved))


def remove_files(store: RunStore, digests: Iterable[str], run_ids: Iterable[str]) -> list[tuple[Path, OSError]]:
    """Move the values and run folders into one temp folder (each is whole or gone for readers), then remove
    it with a few threads: a file system pays per directory removed, not per gc (``bench/bench_state.py``).

    Returns the folders the file system refused to move (with the refusal): those are removed in place."""
    digests, run_ids = list(digests), list(run_ids)
    if not digests and not run_ids:
        return []
    unmoved: list[tuple[Path, OSError]] = []
    grave = store.objects.bury(digests, unmoved)
    runs_dir = store.root / "runs"
    for run_id in run_ids:
        if run_id and "/" not in run_id and run_id not in (".", ".."):
            refused = move_or_remove(runs_dir / run_id, grave / f"run-{run_id}")
            if refused is not None:
                unmoved.append((runs_dir / run_id, refused))
    remove_tree(grave)
    return unmoved


def _unmoved_note(unmoved: list[tuple[Path, OSError]]) -> str:
    """``1 value and 1 run folder could not be moved …; 2 folders left, remove them by hand: …``"""
    runs = sum(path.parent.name == "runs" for path, _ in unmoved)
    parts = [
        _count(len(unmoved) - runs, "value") if len(unmoved) > runs else "",
        _count(runs, "run folder") if runs else "",
    ]
    reasons = ", ".join(sorted({exc.strerror or type(exc).__name__ for _, exc in unmoved}))
    note = f"{' and '.join(p for p in parts if p)} could not be moved out of the store ({reasons}); their files were removed in place"
    left = [str(path) for path, _ in unmoved if os.path.lexists(path)]
    if left:
        shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        note += f"; {_count(len(left), 'folder')} left, remove {'it' if len(left) == 1 else 'them'} by hand: {shown}"
    return note


# ----------------------------------------------------------------------------------------- verify


@dataclass
class VerifyReport:
    """What ``gc --verify`` found: values checked, corrupt ones removed, cache entries dropped with them."""

    checked: int
    removed: list[tuple[str, str]]  # (hash, reason)
    cache_entries: int

    def text(self) -> str:
        head = (
            f"gc --verify: {_count(self.checked, 'value')} checked, {len(self.removed)} corrupt removed, "
            f"{_count(self.cache_entries, 'cache entry').replace('entrys', 'entries')} dropped"
        )
        if self.removed:
            head += " (the steps that made them run again on the next run)"
        return "\n".join([head] + [f"  {digest[:12]}: {reason}" for digest, reason in self.removed])

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        head, *rest = self.text().splitlines()
        return f"<div><b>{html.escape(head)}</b><pre>{html.escape(chr(10).join(rest))}</pre></div>"


def verify(store: RunStore) -> VerifyReport:
    """Check every stored value against its hash; remove corrupt ones and the cache entries listing them."""
    with _lock(store):
        checked, removed = store.objects.verify_all()
        dropped = store.cache_drop_values({digest for digest, _ in removed})
    return VerifyReport(checked, removed, dropped)


@dataclass
class SignReport:
    """What ``gc --sign-unsigned`` found (and, with ``--yes SET``, signed): values the store cannot vouch for."""

    found: list[tuple[str, str, int]]  # (hash, format, bytes)
    signed: list[tuple[str, str, int]]  # (hash, format, bytes) of the values signed
    corrupt: list[tuple[str, str]]  # (hash, reason): removed instead of signed
    verified: str = ""  # the ``--verify`` summary when both were asked for
    listed: bool = True  # only listed (no --yes)

    @property
    def digest(self) -> str:
        return unsigned_set(self.found)

    def text(self) -> str:
        return "\n".join(line for line in (self.verified, self._text()) if line)

    def _text(self) -> str:
        formats = ", ".join(sorted({fmt for _, fmt, _ in self.found}))
        size = format_size(sum(n for _, _, n in self.found))
        if not self.found:
            return "gc --sign-unsigned: every value that could run code on load is signed"
        if self.listed:
            shown = self.found[:LISTED]
            return "\n".join(
                [
                    f"gc --sign-unsigned: {_count(len(self.found), 'value')} ({formats}, {size}) not signed with "
                    "this store's key, refused by %restore; if you trust everyone who could write this store, sign "
                    f"exactly these with --sign-unsigned --yes {self.digest}"
                ]
                + [f"  {digest[:12]}  {fmt}, {format_size(n)}" for digest, fmt, n in shown]
                + ([f"  … and {len(self.found) - len(shown)} more"] if len(self.found) > len(shown) else [])
            )
        formats = ", ".join(sorted({fmt for _, fmt, _ in self.signed})) or "none"
        size = format_size(sum(n for _, _, n in self.signed))
        lines = [f"gc --sign-unsigned: signed {_count(len(self.signed), 'value')} ({formats}, {size})"]
        if self.corrupt:
            lines[0] += f"; {len(self.corrupt)} corrupt removed instead"
        lines += [f"  signed {digest[:12]}  {fmt}, {format_size(n)}" for digest, fmt, n in self.signed]
        lines += [f"  {digest[:12]}: {reason}" for digest, reason in self.corrupt]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


LISTED = 50  # values listed one per line by ``gc --sign-unsigned`` (the set digest covers them all)


def unsigned_set(found: Iterable[tuple[str, str, int]]) -> str:
    """A short digest of a set of unsigned values (hash, format, bytes): what ``--yes SET`` must match."""
    import hashlib

    text = "\n".join(f"{digest} {fmt} {size}" for digest, fmt, size in sorted(found))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sign_unsigned(store: RunStore, yes: str | None = None) -> SignReport:
    """List the values not signed with the store's key whose format can run code; with ``yes`` (the set
    digest the listing printed: the user trusts whoever wrote exactly those values, e.g. values stored before
    signing existed), check each against its hash and sign it. A corrupt one is removed with its cache entries
    instead. If the unsigned values are no longer the listed set, nothing is signed (:class:`GcError`)."""
    from ..runtime import marshal

    with _lock(store):
        found = sorted(store.objects.unsigned())
        if not yes:
            return SignReport(found, [], [])
        if found and yes != unsigned_set(found):
            raise GcError(
                f"gc --sign-unsigned --yes {yes}: the unsigned values changed since that listing (their set is now "
                f"{unsigned_set(found)}); nothing signed: list them again with gc --sign-unsigned"
            )
        signed, corrupt = [], []
        for digest, fmt, size in found:
            try:
                store.objects.vouch(digest)
                signed.append((digest, fmt, size))
            except marshal.CorruptValue as exc:
                if store.objects.delete(digest):
                    corrupt.append((digest, str(exc)))
        store.cache_drop_values({digest for digest, _ in corrupt})
    return SignReport(found, signed, corrupt, listed=False)


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
    count, oldest, total = store.totals()
    over = (policy.keep_last is not None and count > policy.keep_last) or (
        policy.older_than is not None and oldest is not None and oldest < time.time() - policy.older_than
    )
    if not over and policy.max_size is not None:
        over = total > policy.max_size
    if not over:
        return None
    shared = frozenset(store.remote_record_runs(str(store.remote.uri)).values()) if store.remote else frozenset()
    with _lock(store, wait=False) as got:
        if not got:
            return None
        return _collect(store, policy, False, set(), 60.0, time.time(), copies_only=shared)
