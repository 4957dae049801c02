"""The shared run store: runs and values published to S3, Cloud Storage or a shared folder, read back by every kernel.

Layout under the store URI's prefix::

    objects/<h[:2]>/<h>/<files>, manifest.sig, manifest.json   a value, content-addressed as locally
    runs/<ms>-<run id>.json                                     one signed JSON record per published run (loose)
    index/<sha256>.json.gz                                      a segment: loose records folded together, as they were
    live/<run id>.json                                          a running run's heartbeat (the store stamps its time)
    quarantine/runs/...                                         records gc set aside: unreadable or not verifiable
    locks/writer-<id>.json, locks/gc-<id>.json                  leases: publishing and gc exclude each other

The local store under ``$NBMAGIC_HOME`` stays the cache in front of it: a finished run is published (its
values first, each value's ``manifest.json`` last and only if absent, then the run's record), and before
``%runs``/``%restore``/``%lineage`` the records not seen yet are imported into the local index. A sync lists
every loose record and every segment and reads the keys it has not seen: no writer's clock is trusted. Loose
records stay few: a publisher holding ``COMPACT_EVERY`` of them (and a sync that lists ``READER_COMPACT_AT``) folds
them into a content-addressed segment, written before the folded records are removed, and merges the small
segments once there are ``MERGE_AT``; gc merges them all. Values are pulled on first use
into the local content-addressed cache and checked against their hash; a value that does not match is removed
from the shared store, so the step that made it runs again.

Trust: values and records are signed (HMAC-SHA256) with the team's key ``$NBMAGIC_STORE_KEY``, kept in a
secret and never written to the store. A pulled value whose signature does not match is loaded only if its
format runs no code (``npy``, ``parquet``); a record whose signature does not match is skipped with one line
(each record in a segment too: a segment is only a faster way to read the records it holds).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..runtime import marshal
from ..store_uri import StoreURI, shared_key
from .backends import Backend, Blob, RemoteError, open_backend
from .objects import SAFE_FORMATS, CorruptValueError, ObjectStore, StoreError, UntrustedValue

if TYPE_CHECKING:
    from .runs import RunStore

RECORD_FORMAT = 1
SEGMENT_FORMAT = 2
_SEGMENT = re.compile(r"index/[0-9a-f]{64}\.json\.gz")
_RECORD_KEY = re.compile(r"runs/(?!\.)[^/\\\x00-\x1f]{1,250}\.json")  # a loose record's key, as a segment may name it
COMPACT_EVERY = int(
    os.environ.get("NBMAGIC_STORE_COMPACT_EVERY", "64")
)  # a publisher holding this many loose records folds them
COMPACT_MIN = 16  # fewer loose records than this stay loose
READER_COMPACT_AT = 128  # a sync listing this many loose records folds them
MERGE_AT = 8  # segments are merged into one once there are this many
LEASE_S = float(os.environ.get("NBMAGIC_STORE_RUN_LEASE", "600"))  # a running run silent this long is lost
RUNNING_CAP_S = float(os.environ.get("NBMAGIC_STORE_RUN_CAP", str(7 * 86400)))  # "running" longer: lost
STALE_S = 10 * 60.0  # a lease not renewed for this long belongs to a process that died
RENEW_S = 60.0
WAIT_S = float(os.environ.get("NBMAGIC_STORE_LOCK_WAIT", "600"))


def _sign(key: bytes | None, data: bytes) -> str | None:
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else None


def _verified(key: bytes | None, data: bytes, signature: str | bytes | None) -> bool:
    if not key or not signature:
        return False
    text = signature.decode(errors="replace") if isinstance(signature, bytes) else signature
    return hmac.compare_digest(text.strip(), _sign(key, data) or "")


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()


def _loads(data: bytes | None) -> Any:
    """A record body parsed, or None when it is not JSON."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def segment_bytes(entries: dict[str, Any]) -> tuple[str, bytes]:
    """(key, bytes) of the segment holding ``entries`` (record key -> body): named by the hash of its bytes."""
    body = {"format": SEGMENT_FORMAT, "entries": [{"key": k, **entries[k]} for k in sorted(entries)]}
    data = gzip.compress(json.dumps(body, sort_keys=True).encode(), 6, mtime=0)
    return f"index/{hashlib.sha256(data).hexdigest()}.json.gz", data


def record_hashes(record: dict[str, Any]) -> set[str]:
    """Every value hash a run record refers to."""
    return {
        ref["hash"]
        for ex in record.get("executions", ())
        for kind in ("inputs", "outputs")
        for ref in (ex.get(kind) or {}).values()
    }


def _name(value: Any) -> bool:
    """A run id or step name: it becomes a path, so letters, digits and ``-_.`` only, not starting with a dot."""
    return (
        isinstance(value, str)
        and bool(value)
        and not value.startswith(".")
        and all(c.isalnum() or c in "-_." for c in value)
    )


def _number(value: Any, optional: bool = False) -> bool:
    return (value is None and optional) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _mapping(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def well_formed(record: Any) -> bool:
    """Whether a run record has every field the local index needs, each of the right type."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return False
    run, experiment, executions = record.get("run"), record.get("experiment"), record.get("executions")
    if not isinstance(run, dict) or not _name(run.get("id")) or not isinstance(run.get("pipeline"), str):
        return False
    if not isinstance(run.get("status"), str) or not _number(run.get("started")):
        return False
    if not _number(run.get("ended"), optional=True) or not _number(run.get("steps"), optional=True):
        return False
    if not all(_mapping(run.get(k)) for k in ("parameters", "metrics")):
        return False
    names = run.get("step_names")
    if names is not None and (not isinstance(names, list) or not all(_name(n) for n in names)):
        return False
    if experiment is not None and not (isinstance(experiment, dict) and isinstance(experiment.get("name"), str)):
        return False
    if experiment is not None and not _mapping(experiment.get("properties")):
        return False
    if executions is None:
        return True
    if not isinstance(executions, list):
        return False
    for ex in executions:
        if not isinstance(ex, dict) or not _name(ex.get("step")) or not isinstance(ex.get("state"), str):
            return False
        if not (_number(ex.get("started"), optional=True) and _number(ex.get("ended"), optional=True)):
            return False
        if not all(_mapping(ex.get(k)) for k in ("properties", "inputs", "outputs")):
            return False
        for kind in ("inputs", "outputs"):
            refs = ex.get(kind) or {}
            if not all(isinstance(r, dict) and isinstance(r.get("hash"), str) for r in refs.values()):
                return False
    return True


class RemoteStore:
    """One shared store (an S3 or Cloud Storage bucket prefix, or a folder) and the operations the local store needs."""

    def __init__(self, uri: StoreURI, backend: Backend | None = None) -> None:
        self.uri = uri
        self.backend = backend or open_backend(uri)
        self.key = shared_key()
        self._bodies: dict[str, bytes] = {}  # loose record key -> its bytes, while it is loose
        self._fold_refused = False  # a sync's fold was refused (read-only credentials): not tried again

    # ------------------------------------------------------------------ values
    @staticmethod
    def _object_key(digest: str, name: str = "") -> str:
        return f"objects/{digest[:2]}/{digest}/{name}"

    def has_object(self, digest: str) -> bool:
        return self.backend.exists(self._object_key(digest, marshal.MANIFEST))

    def push_object(self, objects: ObjectStore, digest: str) -> bool:
        """Upload a local value unless the store has it; its manifest goes last, so a reader never sees it half
        written. Returns True when this call uploaded it."""
        folder = objects._path(digest)
        try:
            manifest_bytes = (folder / marshal.MANIFEST).read_bytes()
            manifest = json.loads(manifest_bytes)
        except (OSError, ValueError):
            raise StoreError(f"value {digest[:12]} is not in the local store: cannot publish it") from None
        stored = self.backend.get_bytes(self._object_key(digest, marshal.MANIFEST))
        if stored is not None:
            # uploaded before, maybe by a writer without the team key (or with another): sign it if it is this
            # very manifest (its files are checked against it by hash on every pull)
            sig_key = self._object_key(digest, "manifest.sig")
            if (
                self.key
                and stored == manifest_bytes
                and not _verified(self.key, stored, self.backend.get_bytes(sig_key))
            ):
                self.backend.put_bytes(sig_key, (_sign(self.key, stored) or "").encode())
            return False
        for entry in manifest["files"]:
            self.backend.put_file(self._object_key(digest, entry["path"]), folder / entry["path"])
        signature = _sign(self.key, manifest_bytes)
        if signature:
            self.backend.put_bytes(self._object_key(digest, "manifest.sig"), signature.encode())
        return self.backend.put_bytes(self._object_key(digest, marshal.MANIFEST), manifest_bytes, if_absent=True)

    def pull_object(self, objects: ObjectStore, digest: str, name: str) -> bool:
        """Download a value into the local cache, checked against its hash and the team key; False if absent.

        A value whose bytes do not match is removed from the shared store (:class:`CorruptValueError`); one that
        is not signed with the team key and could run code is refused (:class:`UntrustedValue`)."""
        manifest_bytes = self.backend.get_bytes(self._object_key(digest, marshal.MANIFEST))
        if manifest_bytes is None:
            return False
        tmp = objects._new_tmp("pull")
        try:
            (tmp / marshal.MANIFEST).write_bytes(manifest_bytes)
            try:
                manifest = json.loads(manifest_bytes)
                files = [entry["path"] for entry in manifest["files"]]
            except (ValueError, KeyError, TypeError):
                files = None
            if files is None or any(not p or "/" in p or p in (".", "..", marshal.MANIFEST) for p in files):
                self._corrupt(digest, name, f"stored value {name!r} is corrupt: manifest unusable")
            for path in files:
                if not self.backend.get_file(self._object_key(digest, path), tmp / path):
                    self._corrupt(digest, name, f"stored value {name!r} is corrupt: file {path} is missing")
            try:
                marshal.verify(tmp, name, expected_hash=digest)
            except marshal.CorruptValue as exc:
                self._corrupt(digest, name, str(exc))
            signature = self.backend.get_bytes(self._object_key(digest, "manifest.sig"))
            if _verified(self.key, manifest_bytes, signature):
                objects._sign(tmp)
            elif manifest.get("format") not in SAFE_FORMATS:
                hint = "no $NBMAGIC_STORE_KEY is set here" if not self.key else "its signature does not match"
                raise UntrustedValue(
                    f"stored value {name!r} ({manifest.get('format')}) in {self.uri} is not signed with the team key"
                    f" ({hint}): refused before loading, as it could run code"
                )
            for p in tmp.iterdir():
                p.chmod(0o400)
            final = objects._path(digest)
            with objects._lease():
                if not objects.exists(digest):
                    for folder in (objects.objects_dir, final.parent):  # owner-only whatever the umask
                        if not folder.is_dir():
                            folder.mkdir(mode=0o700, exist_ok=True)
                            folder.chmod(0o700)
                    try:
                        os.rename(tmp, final)
                    except OSError:
                        if not objects.exists(digest):
                            raise
            return True
        except OSError as exc:
            raise StoreError(f"cannot cache value {name!r} from {self.uri}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _corrupt(self, digest: str, name: str, detail: str) -> None:
        self.drop_object(digest)
        raise CorruptValueError(
            f"{detail} (in {self.uri}); it was removed from the shared store, so the step that made it runs again"
        )

    def drop_object(self, digest: str) -> None:
        """Remove a value: its manifest first, so readers see it whole or not at all. Only the files listed
        before are deleted (a value uploaded again meanwhile keeps what was written after the listing)."""
        listed = [blob.key for blob in self.backend.list(self._object_key(digest))]
        manifest = self._object_key(digest, marshal.MANIFEST)
        for key in sorted(listed, key=lambda k: k != manifest):
            self.backend.delete(key)

    # ------------------------------------------------------------------ runs
    def publish(self, store: RunStore, run_id: str) -> str:
        """Upload a finished run's values, then its signed record; returns the record's key."""
        record = store.export_run(run_id)
        with self.lease("writer"):
            for digest in sorted(record_hashes(record)):
                if store.objects.exists(digest):
                    self.push_object(store.objects, digest)
                elif not self.has_object(digest):  # a record naming a value nobody can load: not published
                    raise StoreError(
                        f"value {digest[:12]} of run {run_id} is neither in the local store nor in {self.uri}:"
                        " cannot publish the run"
                    )
            key = f"runs/{int(time.time() * 1000):013d}-{run_id}.json"
            self.put_record(key, record)
        store.mark_remote_seen(str(self.uri), [(key, run_id)])
        self.fold_if_due(key)
        return key

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        """Write one run record, signed with the team key (the caller holds a writer lease)."""
        data = json.dumps({"record": record, "sig": _sign(self.key, _canonical(record))}).encode()
        self.backend.put_bytes(key, data)
        self._remember(key, data)

    def fold_if_due(self, key: str) -> None:
        """After publishing ``key``: once this process holds ``COMPACT_EVERY`` loose records (its own, those its
        syncs read), fold them into a segment, with no GET."""
        if len(self._bodies) >= COMPACT_EVERY:
            with contextlib.suppress(RemoteError):  # folding is for speed: a failure leaves the records loose
                self.compact(fetch=False)

    def publish_trial(
        self,
        run_id: str,
        *,
        pipeline: str,
        experiment: str,
        properties: dict[str, Any],
        parameters: dict[str, Any],
        metrics: dict[str, float],
        status: str,
    ) -> str:
        """Record that run ``run_id`` (whose steps record themselves) was a trial of ``experiment``."""
        if not run_id or not all(c.isalnum() or c in "-_." for c in run_id):
            raise RemoteError(f"the run store {self.uri}: not a run id: {run_id!r}")
        now = time.time()
        record = {
            "format": RECORD_FORMAT,
            "run": {
                "id": run_id,
                "pipeline": pipeline,
                "status": status,
                "kind": "kfp",
                "parameters": parameters,
                "metrics": metrics,
                "notebook": None,
                "experiment": experiment,
                "started": now,
                "ended": now,
                "steps": 0,
                "cached": 0,
                "error": None,
                "url": None,
                "dag": None,
            },
            "experiment": {"name": experiment, "properties": {k: v for k, v in properties.items() if v}},
            "executions": [],
            "exported": now,
        }
        key = f"runs/{int(now * 1000):013d}-{run_id}-trial.json"
        with self.lease("writer"):
            self.put_record(key, record)
        self.fold_if_due(key)
        return key

    # ------------------------------------------------------------------ sync
    def _get_many(self, keys: list[str], workers: int = 16) -> list[bytes | None]:
        """GET ``keys`` over a bounded pool of threads (S3 answers them side by side)."""
        if len(keys) < 2:
            return [self.backend.get_bytes(k) for k in keys]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(keys))) as pool:
            return list(pool.map(self.backend.get_bytes, keys))

    def segments(self) -> list[Blob]:
        """The compacted segments (``index/<sha256>.json.gz``) in the store."""
        return [b for b in self.backend.list("index/") if _SEGMENT.fullmatch(b.key)]

    @staticmethod
    def segment_entries(key: str, data: bytes | None) -> tuple[dict[str, Any] | None, str]:
        """(record key -> body, "") of a segment, or (None, why): "missing", "broken" (its bytes do not hash to
        its name, or do not hold a segment) or "newer" (whole, but of a format this version does not know).
        Entries whose key is not a record key are left out (each body is still checked on its own)."""
        if data is None:
            return None, "missing"
        if hashlib.sha256(data).hexdigest() != key.removeprefix("index/").removesuffix(".json.gz"):
            return None, "broken"
        try:
            body = json.loads(gzip.decompress(data))
            fmt = body.get("format")
        except (OSError, EOFError, ValueError, AttributeError):
            return None, "broken"
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > SEGMENT_FORMAT:
            return None, "newer"
        entries = body.get("entries") if fmt == SEGMENT_FORMAT else None
        if not isinstance(entries, list):
            return None, "broken"
        return {
            e["key"]: {"record": e.get("record"), "sig": e.get("sig")}
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("key"), str) and _RECORD_KEY.fullmatch(e["key"])
        }, ""

    @classmethod
    def segment_items(cls, key: str, data: bytes | None) -> list[tuple[str, Any]] | None:
        """Every entry of a whole segment of a known format as (key, body), whatever its key ("" when it has
        none); None otherwise."""
        if cls.segment_entries(key, data)[0] is None:
            return None
        items = []
        for e in json.loads(gzip.decompress(data or b""))["entries"]:
            e = e if isinstance(e, dict) else {}
            name = e.get("key") if isinstance(e.get("key"), str) else ""
            items.append((name, {"record": e.get("record"), "sig": e.get("sig")}))
        return items

    @classmethod
    def read_segment(cls, key: str, data: bytes | None) -> dict[str, Any] | None:
        """record key -> body (``{"record", "sig"}``) of a segment; None unless its bytes hash to its name and
        hold a segment of a known format."""
        return cls.segment_entries(key, data)[0]

    def _key_mark(self) -> str:
        """A short fingerprint of the team key: what was judged unsigned under one key is judged again under
        another."""
        return hashlib.sha256(b"nbmagic-mark:" + (self.key or b"")).hexdigest()[:16]

    def _read_segments(
        self, listed: list[str], unseen: Callable[[list[str]], list[str]], workers: int
    ) -> list[tuple[str, bytes | None]]:
        """(key, bytes) of the segments in ``listed`` that ``unseen`` keeps; a segment merged (and removed)
        between the listing and its GET is made up for by listing again, a few times at most, until nothing
        vanishes (the merged segment was written before the old one was removed)."""
        out: list[tuple[str, bytes | None]] = []
        done: set[str] = set()
        todo = unseen(listed)
        for _attempt in range(5):
            got = list(zip(todo, self._get_many(todo, workers)))
            done.update(todo)
            out += [(k, d) for k, d in got if d is not None]
            vanished = [k for k, d in got if d is None]
            if not vanished:
                return out
            todo = unseen([b.key for b in self.segments() if b.key not in done])
            if not todo:
                return out
        out += [(k, None) for k in todo]
        return out

    def sync(self, store: RunStore, workers: int = 16) -> int:
        """Import the records not seen yet into the local index; returns how many runs were imported.

        Lists every loose record key (``runs/``) and every segment key (``index/``) and reads those not seen
        before: nothing depends on the writers' clocks. Loose records are few, as publishers and readers fold
        them into segments (:meth:`compact`). The loose keys are read first, the segments second: a record
        folded (and removed) meanwhile is in a segment listed after its removal."""
        uri, mark = str(self.uri), self._key_mark()
        loose = [b.key for b in self.backend.list("runs/") if b.key.endswith(".json")]
        seen = store.remote_seen(uri, loose + [f"{k}@{mark}" for k in loose])
        fresh = [k for k in loose if k not in seen and f"{k}@{mark}" not in seen]
        copies: dict[str, list[Any]] = {}  # record key -> every copy found, loose first
        for key, data in zip(fresh, self._get_many(fresh, workers)):
            if data is not None:  # None: folded into a segment meanwhile, read below
                self._remember(key, data)
                copies.setdefault(key, []).append(_loads(data))

        def unseen(keys: list[str]) -> list[str]:
            done = store.remote_seen(uri, keys + [f"{k}@{mark}" for k in keys])
            return [k for k in keys if k not in done and f"{k}@{mark}" not in done]

        whole, broken, newer = [], [], []
        for seg, data in self._read_segments([b.key for b in self.segments()], unseen, workers):
            entries, why = self.segment_entries(seg, data)
            if entries is None:
                (newer if why == "newer" else broken if why == "broken" else []).append(seg)
                continue
            known = store.remote_seen(uri, list(entries))
            for key, body in entries.items():
                if key not in known:
                    copies.setdefault(key, []).append(body)
            whole.append((seg, set(entries)))
        records, marks, skipped, malformed, later = [], [], set(), [], set()
        unsigned: dict[str, str] = {}  # "<key>#<sig>@<mark>" -> record key, for each copy not signed with this key
        for key in sorted(copies):
            verdicts = [self._check(body) for body in copies[key]]
            record = next((r for r, _ in verdicts if r is not None), None)
            if record is not None:  # the first copy that verifies: a forged one listed before it does not hide it
                records.append(record)
                marks.append((key, record["run"]["id"]))
                continue
            if any(why == "newer" for _, why in verdicts):  # not marked seen: read again once upgraded
                later.add(key)
                continue
            if all(why == "malformed" for _, why in verdicts):
                malformed.append(key)
                marks.append((key, None))
                continue
            skipped.add(key)  # read again under another team key, but not reported again under this one
            for body, (_, why) in zip(copies[key], verdicts):
                if why == "unsigned":
                    sig = body.get("sig") if isinstance(body.get("sig"), str) else ""
                    unsigned[f"{key}#{hashlib.sha256(sig.encode()).hexdigest()[:16]}@{mark}"] = key
        imported = store.import_runs(records)
        new_unsigned = sorted({unsigned[m] for m in set(unsigned) - store.remote_seen(uri, list(unsigned))})
        marks += [(m, None) for m in unsigned]
        marks += [(f"{k}@{mark}", None) for k in fresh if k in skipped]
        # a segment is done with once each of its records is imported or judged (under this key, if unsigned)
        marks += [(seg if not keys & skipped else f"{seg}@{mark}", None) for seg, keys in whole if not keys & later]
        marks += [(seg, None) for seg in broken]
        store.mark_remote_seen(uri, marks)
        if new_unsigned:
            print(
                f"nbmagic: skipped {len(new_unsigned)} run record(s) in {self.uri} not signed with the team key"
                f" ($NBMAGIC_STORE_KEY), e.g. {new_unsigned[0]}",
                file=sys.stderr,
            )
        if malformed:
            print(
                f"nbmagic: skipped {len(malformed)} malformed run record(s) in {self.uri} (a field missing or of"
                f" the wrong type), e.g. {malformed[0]}",
                file=sys.stderr,
            )
        if broken:
            print(
                f"nbmagic: skipped {len(broken)} segment(s) of {self.uri} whose bytes do not match their name,"
                f" e.g. {broken[0]}",
                file=sys.stderr,
            )
        if newer:
            print(
                f"nbmagic: {len(newer)} segment(s) of {self.uri} were written by a newer nbmagic (e.g. {newer[0]}):"
                " the runs they hold are not shown; upgrade nbmagic to see them",
                file=sys.stderr,
            )
        if later:
            print(
                f"nbmagic: {len(later)} run record(s) of {self.uri} were written by a newer nbmagic"
                f" (e.g. {sorted(later)[0]}): the runs they hold are not shown; upgrade nbmagic to see them",
                file=sys.stderr,
            )
        self.judge_liveness(store)
        if len(loose) >= READER_COMPACT_AT and not self._fold_refused:
            runs = store.remote_record_runs(uri)  # records this key verified, now or before
            if sum(k in runs for k in loose) >= READER_COMPACT_AT:
                try:
                    self.compact()
                except RemoteError:  # e.g. read-only credentials: publishers fold them
                    self._fold_refused = True
        return imported

    def _remember(self, key: str, data: bytes) -> None:
        """Keep a loose record's bytes while it is loose, so folding it needs no second GET."""
        if len(self._bodies) >= 20_000:
            self._bodies.clear()
        self._bodies[key] = data

    def _check(self, body: Any) -> tuple[dict[str, Any] | None, str]:
        """(record, "") or (None, why) for a parsed record body: "missing", "malformed", "unsigned" or "newer"
        (signed, or with no team key, but of a format a newer nbmagic writes: neither wrong nor readable here)."""
        if body is None:
            return None, "malformed"
        try:
            record = body["record"]
        except (KeyError, TypeError):
            return None, "malformed"
        if self.key and not _verified(self.key, _canonical(record), body.get("sig")):
            return None, "unsigned"
        fmt = record.get("format") if isinstance(record, dict) else None
        if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > RECORD_FORMAT:
            return None, "newer"
        if not well_formed(record):
            return None, "malformed"
        return record, ""

    def _read_record(self, key: str, data: bytes | None) -> dict[str, Any] | None:
        """The record in ``data`` if it is well formed and (with a team key) signed with it; else None."""
        return self._parse(data)[0]

    def _parse(self, data: bytes | None) -> tuple[dict[str, Any] | None, str]:
        """(record, "") or (None, why): "missing", "malformed" or "unsigned"."""
        if data is None:
            return None, "missing"
        return self._check(_loads(data))

    # ------------------------------------------------------------------ segments
    def compact(self, fetch: bool = True) -> str | None:
        """Fold the loose records this key verifies into one content-addressed segment, then remove what was
        folded: the segment is written first, so a record is always loose or in a segment. Once there are
        ``MERGE_AT`` segments, the small ones go into it too (each at most twice the size of what is merged
        before it, so a record is rewritten a few times, not once per fold). ``fetch`` off: only the records
        this process holds (its own, those its syncs read) are folded, with no GET. Runs under a writer lease;
        gives way to a gc. Returns the segment's key, or None when there was too little to fold or a gc holds
        the store."""
        try:
            with self.lease("writer", wait=False):
                return self._compact(fetch)
        except StoreBusy:
            return None

    def _compact(self, fetch: bool) -> str | None:
        loose = [b.key for b in self.backend.list("runs/") if b.key.endswith(".json")]  # under the lease: no gc
        listed = set(loose)
        for key in [k for k in self._bodies if k not in listed]:  # folded by others, or dropped by a gc
            del self._bodies[key]
        missing = [k for k in loose if k not in self._bodies] if fetch else []
        for key, data in zip(missing, self._get_many(missing)):
            if data is not None:
                self._remember(key, data)
        entries: dict[str, Any] = {}
        size = 0
        for key in loose:
            data = self._bodies.get(key)
            body = _loads(data)
            if self._check(body)[0] is not None:  # others (not this key's, malformed) stay loose for gc to judge
                entries[key] = {"record": body["record"], "sig": body.get("sig")}
                size += len(data or b"") // 8  # about what it weighs gzipped
        if len(entries) < COMPACT_MIN:
            return None
        folded = set(entries)
        merged = []
        segments = sorted(self.segments(), key=lambda b: b.size)
        if len(segments) + 1 >= MERGE_AT:
            chosen = []
            for blob in segments:
                if blob.size > 2 * size and len(chosen) >= 2:
                    break
                chosen.append(blob.key)
                size += blob.size
            read = [(k, self.segment_items(k, d)) for k, d in zip(chosen, self._get_many(chosen))]
            # only copies this key verifies are carried (so a forged copy never replaces a real one, whichever
            # segment is read first); a segment holding anything else stays where it is, for gc to judge
            for old, items in read:
                if items is None:
                    continue
                good = [(key, body) for key, body in items if _RECORD_KEY.fullmatch(key) and self._check(body)[0]]
                for key, body in good:
                    entries.setdefault(key, body)
                if len(good) == len(items):
                    merged.append(old)
        seg, data = segment_bytes(entries)
        self.backend.put_bytes(seg, data, if_absent=True)
        self._delete_many([*sorted(folded), *(old for old in merged if old != seg)])
        for key in folded:
            self._bodies.pop(key, None)
        return seg

    def _delete_many(self, keys: list[str], workers: int = 16) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if keys:
            with ThreadPoolExecutor(max_workers=min(workers, len(keys))) as pool:
                list(pool.map(self.backend.delete, keys))

    # ------------------------------------------------------------------ liveness
    def judge_liveness(self, store: RunStore) -> None:
        """Runs of other homes still "running" whose heartbeat (``live/<run>.json``, renewed by the step that
        runs and written by each step that ends) is older than ``LEASE_S`` by the store's clock are shown as
        "lost", with one line; a heartbeat seen again makes them "running" again. A run started over
        ``RUNNING_CAP_S`` ago with no fresh heartbeat is shown as lost (gc still keeps any run whose heartbeat
        is fresh, see :meth:`signs_of_life`). A run that never had a heartbeat
        (written by an older version) is left as it is until then."""
        active = store.remote_active_runs()
        if not active:
            return
        beats = {b.key[5:-5]: b.modified for b in self.backend.list("live/") if b.key.endswith(".json")}
        now = self.backend.now()
        for run_id, (status, started) in active.items():
            beating = run_id in beats and now - beats[run_id] <= LEASE_S
            if now - started > RUNNING_CAP_S and not beating:
                if status == "running":
                    store.update_run(run_id, status="lost")
                    print(
                        f"nbmagic: run {run_id} in {self.uri} started {(now - started) / 86400:.0f} days ago and is"
                        f" still running by its records: shown as lost (over {RUNNING_CAP_S / 86400:g} days;"
                        " $NBMAGIC_STORE_RUN_CAP sets the limit)",
                        file=sys.stderr,
                    )
                continue
            if run_id not in beats:
                continue
            silent = now - beats[run_id]
            if silent > LEASE_S and status == "running":
                store.update_run(run_id, status="lost")
                print(
                    f"nbmagic: run {run_id} in {self.uri} has sent no heartbeat for {silent / 60:.0f} min (its step's"
                    f" pod or process was likely killed, or it waits between steps): shown as lost; gc keeps it for"
                    " a day after its last heartbeat or step",
                    file=sys.stderr,
                )
            elif silent <= LEASE_S and status == "lost":
                store.update_run(run_id, status="running")

    def signs_of_life(self) -> dict[str, float]:
        """run id -> how many seconds ago (by the store's clock) its ``live/`` heartbeat was last written."""
        now = self.backend.now()
        return {b.key[5:-5]: max(0.0, now - b.modified) for b in self.backend.list("live/") if b.key.endswith(".json")}

    # ------------------------------------------------------------------ leases
    def _live(self, prefix: str, mine: str = "") -> list[str]:
        """Leases under ``prefix`` renewed within ``STALE_S`` by the store's clock (this machine's may be off)."""
        now = self.backend.now()
        return [b.key for b in self.backend.list(prefix) if b.key != mine and now - b.modified < STALE_S]

    @contextlib.contextmanager
    def lease(self, role: str, wait: bool = True) -> Iterator[None]:
        """Hold a ``writer`` lease (many at once) or the ``gc`` lease (alone): each side writes its lease, then
        looks for the other's; the store's strong consistency means at least one of two racing sides sees the
        other and steps back. A writer waits for a gc (unless ``wait`` is off); a gc gives way to writers
        (:class:`StoreBusy`)."""
        other = "gc" if role == "writer" else "writer"
        key = f"locks/{role}-{uuid.uuid4().hex}.json"
        info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
        deadline = time.time() + WAIT_S
        while True:
            self.backend.put_bytes(key, info)
            holders = self._live(f"locks/{other}-")
            if role == "gc" and holders:  # a gc never waits for writers: they may be many
                self.backend.delete(key)
                raise StoreBusy(
                    f"gc: {len(holders)} run(s) are publishing to {self.uri} right now; nothing was removed"
                    " (run gc again later)"
                )
            if not holders:
                break
            self.backend.delete(key)
            if not wait:
                raise StoreBusy(f"the run store {self.uri}: a gc holds it ({holders[0]})")
            if time.time() > deadline:
                raise RemoteError(f"the run store {self.uri}: a gc has held it for over {WAIT_S:.0f} s ({holders[0]})")
            time.sleep(random.uniform(0.2, 1.0))
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(RENEW_S):
                with contextlib.suppress(RemoteError):
                    self.backend.put_bytes(key, info)

        thread = threading.Thread(target=renew, daemon=True, name="nbmagic-store-lease")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()  # a renewal under way would write the lease again after the delete
            with contextlib.suppress(RemoteError):
                self.backend.delete(key)


class StoreBusy(RemoteError):
    """A gc of the shared store gave way to runs that are publishing."""
