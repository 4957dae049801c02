"""gc of the shared store: the records of runs the policy dropped, then values no remaining run refers to.

Runs under the store's gc lease (:meth:`RemoteStore.lease`): while it is held no run publishes or folds records,
and a gc never starts while one does (it gives way with one line), so a value a run is about to refer to is
never collected. The policy is the local one (``nbmagic.store.gc``), applied to the local index right after a
full sync, so it sees every run of the team. Every record, loose or in a segment, is read: the values the kept
ones name stay. A record that cannot be read or verified does not stop gc: it is set aside under
``quarantine/`` (one line), and every value hash its bytes mention stays, now and in later gcs while it is
there. A value's files are removed manifest first (readers see it whole or not at all); files left by an
interrupted upload (no manifest), leases of dead processes and old heartbeats go too. Last, the kept records
are written as one segment (``index/``), which a new kernel's first sync reads in one GET.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..units import format_size
from . import shared_cache
from .objects import StoreError
from .remote import _RECORD_KEY, _SEGMENT, LEASE_S, STALE_S, RemoteStore, _loads, record_hashes, segment_bytes
from .runs import RunStore


@dataclass
class SharedSweep:
    records: int = 0
    values: int = 0
    bytes: int = 0
    leftovers: int = 0
    quarantined: list[str] = field(default_factory=list)

    def line(self, uri: str, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        text = (
            f"shared store {uri}: {verb} {self.records} run records, {self.values} values"
            f" ({format_size(self.bytes)}), {self.leftovers} leftover files"
        )
        if self.quarantined:
            text += (
                f"; {'would set' if dry_run else 'set'} aside {len(self.quarantined)} unreadable or unverifiable run"
                f" record(s) under quarantine/ (e.g. {self.quarantined[0]}), keeping every value they name"
            )
        return text


def gzip_text(data: bytes) -> bytes:
    """A segment's bytes as text when they unzip (so the hashes they mention can be found), else as they are."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError):
        return data


@dataclass
class Survey:
    """What a shared gc read before anything is applied: the segments and loose records of the store."""

    old_segments: list[str]
    read: list[tuple[str, bytes | None]]
    loose: list[str]
    fetched: dict[str, bytes | None]


def survey(store: RunStore) -> Survey:
    """Read every segment and loose record, and stop (:class:`StoreError`, nothing applied yet, here or in the
    local index) when gc cannot judge them: a segment or record of a newer format, or a team key that verifies
    none of the signed records, or fewer than those it cannot verify (a mistyped ``$NBMAGIC_STORE_KEY`` would
    set the team's records aside). The caller holds the gc lease."""
    remote = store.remote
    backend = remote.backend
    old_segments = [b.key for b in backend.list("index/")]
    segments = [k for k in old_segments if _SEGMENT.fullmatch(k)]  # others: indexes of an older version
    read = list(zip(segments, remote._get_many(segments)))
    newer = [seg for seg, data in read if remote.segment_entries(seg, data)[1] == "newer"]
    if newer:  # whole, of a format this version cannot judge: its runs are not this gc's to hide
        raise StoreError(
            f"gc: {len(newer)} segment(s) of {remote.uri} were written by a newer nbmagic (e.g. {newer[0]}):"
            " nothing was removed; run gc with that version"
        )
    loose = [b.key for b in backend.list("runs/") if b.key.endswith(".json")]
    unknown = [k for k in loose if k not in remote._bodies]
    fetched = dict(zip(unknown, remote._get_many(unknown)))
    bodies: list[tuple[str, Any]] = []
    for seg, data in read:
        if data is not None:
            bodies += RemoteStore.segment_items(seg, data) or []
    bodies += [(key, _loads(data)) for key in loose if (data := remote._bodies.get(key, fetched.get(key)))]
    later, good, foreign = [], set(), set()
    for key, body in bodies:
        record, why = remote._check(body) if _RECORD_KEY.fullmatch(key) else (None, "malformed")
        if why == "newer":
            later.append(key)
        elif record is not None:
            good.add(key)
        elif why == "unsigned" and isinstance(body, dict) and body.get("sig"):
            foreign.add(key)  # signed, but not with this key
    if later:
        raise StoreError(
            f"gc: {len(later)} run record(s) of {remote.uri} were written by a newer nbmagic (e.g. {later[0]}):"
            " nothing was removed; run gc with that version"
        )
    foreign -= good  # a record with one copy that verifies is this team's
    if remote.key and foreign and len(good) < len(foreign):
        raise StoreError(
            f"gc: $NBMAGIC_STORE_KEY verifies {len(good)} of the {len(good) + len(foreign)} signed run records"
            f" in {remote.uri} (mistyped, or another team's key?): nothing was moved or removed; set the team's"
            " key and run gc again"
        )
    return Survey(old_segments, read, loose, fetched)


def sweep(
    store: RunStore, dropped: set[str], dry_run: bool = False, grace: float = 60.0, surveyed: Survey | None = None
) -> SharedSweep:
    """Remove from the shared store what the local gc dropped; the caller holds the gc lease (and ran
    :func:`survey` under it before the local gc, or it is run here)."""
    remote, found = store.remote, SharedSweep()
    backend = remote.backend
    surveyed = surveyed or survey(store)
    now = backend.now()
    keep = store.referenced_hashes(exclude=dropped)  # this home's runs, published or not yet
    kept: dict[str, Any] = {}
    kept_runs: set[str] = set()
    doomed: list[str] = []  # loose records of dropped runs
    suspect: list[bytes] = []  # bytes of records gc cannot trust: a value whose hash they mention stays
    aside: list[tuple[str, bytes, str | None]] = []  # (quarantine key, bytes, loose key to remove)

    dropped_keys: set[str] = set()  # a record may be both loose and in a segment: counted once

    aside_runs: set[str] = set()  # runs with a record set aside: their cache entries and logs stay
    later: list[str] = []  # records of a newer format

    def judge(key: str, body: Any, raw: bytes, loose: bool, where: str) -> None:
        record, why = remote._check(body) if _RECORD_KEY.fullmatch(key) else (None, "malformed")
        if why == "newer":  # signed, of a format this version cannot judge: not this gc's to hide
            later.append(key)
        elif record is None:  # named where it was found: a forged copy's key may be a good record's, or no path
            aside.append((f"quarantine/{where}", raw, key if loose else None))
            suspect.append(raw)
            if _RECORD_KEY.fullmatch(key):
                aside_runs.add(shared_cache.record_run_id(key))
        elif record["run"]["id"] in dropped:
            dropped_keys.add(key)
            if loose:
                doomed.append(key)
        else:
            kept.setdefault(key, {"record": record, "sig": body.get("sig")})
            kept_runs.add(record["run"]["id"])
            keep.update(record_hashes(record))

    old_segments, read = surveyed.old_segments, surveyed.read
    for seg, data in read:
        if data is None:
            continue
        entries = RemoteStore.segment_items(seg, data)
        if entries is None:
            aside.append((f"quarantine/{seg}", data, None))
            suspect.append(gzip_text(data))
            continue
        digest = seg.removeprefix("index/").removesuffix(".json.gz")
        for index, (key, body) in enumerate(entries):
            judge(key, body, json.dumps(body).encode(), False, f"index/{digest}-{index}.json")
    loose, fetched = surveyed.loose, surveyed.fetched
    for key in loose:
        data = remote._bodies.get(key, fetched.get(key))
        if data is not None:
            where = key if _RECORD_KEY.fullmatch(key) else f"runs/{hashlib.sha256(key.encode()).hexdigest()}.json"
            judge(key, _loads(data), data, True, where)
    if later:  # found by survey() already, before anything was applied
        raise StoreError(
            f"gc: {len(later)} run record(s) of {remote.uri} were written by a newer nbmagic (e.g. {later[0]}):"
            " nothing was removed; run gc with that version"
        )
    for blob in list(backend.list("quarantine/")):  # set aside before: what they name still stays
        suspect.append(gzip_text(backend.get_bytes(blob.key) or b""))
    found.records = len(dropped_keys)
    found.quarantined = [key.removeprefix("quarantine/") for key, _, _ in aside]
    if not dry_run:
        for key, data, original in aside:  # copied first, then removed from where readers look
            backend.put_bytes(key, data)
            if original:
                backend.delete(original)
        for key in doomed:
            backend.delete(key)
            remote._bodies.pop(key, None)
    # cache entries and step logs of runs with no record left (a record set aside keeps its run's)
    live = kept_runs | aside_runs
    found.leftovers += shared_cache.sweep(remote, dry_run, grace, dropped, live=live - dropped)
    folders: dict[str, list] = {}
    for blob in backend.list("objects/"):
        parts = blob.key.split("/")
        if len(parts) == 4:
            folders.setdefault(parts[2], []).append(blob)
    for digest, blobs in folders.items():
        if digest in keep or any(now - b.modified < grace for b in blobs):
            continue
        if any(digest.encode() in raw for raw in suspect):
            continue
        whole = any(b.key.endswith("/manifest.json") for b in blobs)
        if whole:
            found.values += 1
            found.bytes += sum(b.size for b in blobs)
        else:
            found.leftovers += len(blobs)
        if not dry_run:
            remote.drop_object(digest)
    for blob in list(backend.list("locks/")):
        if now - blob.modified > STALE_S and not dry_run:
            backend.delete(blob.key)
            found.leftovers += 1
    for blob in list(backend.list("live/")):  # old heartbeats of runs gone or ended (a lost run keeps its own)
        run_id = blob.key.removeprefix("live/").removesuffix(".json")
        run = store.get_run(run_id)
        ended = run_id not in kept_runs or (run is not None and run.status not in ("running", "lost", "pending"))
        if ended and now - blob.modified > LEASE_S:
            if not dry_run:
                backend.delete(blob.key)
            found.leftovers += 1
    if not dry_run:
        # the kept records as one segment, written before the loose records and segments it replaces go
        new = None
        if kept:
            new, data = segment_bytes(kept)
            backend.put_bytes(new, data, if_absent=True)
        remote._delete_many([key for key in loose if key in kept])
        for key in kept:
            remote._bodies.pop(key, None)
        for seg in old_segments:
            if seg != new:
                backend.delete(seg)
    return found
