"""The shared run store: runs and values published to S3, Cloud Storage or a shared folder, read back by every kernel.

Layout under the store URI's prefix::

    objects/<h[:2]>/<h>/<files>, manifest.sig, manifest.json   a value, content-addressed as locally
    runs/<ms>-<run id>.json                                     one signed JSON record per published run
    index/<ms>-<id>.json.gz                                     every run up to <ms>, compacted by gc
    locks/writer-<id>.json, locks/gc-<id>.json                  leases: publishing and gc exclude each other

The local store under ``$NBMAGIC_HOME`` stays the cache in front of it: a finished run is published (its
values first, each value's ``manifest.json`` last and only if absent, then the run's record), and before
``%runs``/``%restore``/``%lineage`` the records not seen yet are imported into the local index (a sync lists the
record keys stamped after its previous listing began, less ``SKEW_S``, and compares them with those seen, so a
writer's clock ahead of the others hides nothing; a key costs one GET once). Values are pulled on first use
into the local content-addressed cache and checked against their hash; a value that does not match is removed
from the shared store, so the step that made it runs again.

Trust: values and records are signed (HMAC-SHA256) with the team's key ``$NBMAGIC_STORE_KEY``, kept in a
secret and never written to the store. A pulled value whose signature does not match is loaded only if its
format runs no code (``npy``, ``parquet``); a record whose signature does not match is skipped with one line.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import os
import random
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..runtime import marshal
from ..store_uri import StoreURI, shared_key
from .backends import Backend, RemoteError, open_backend
from .objects import SAFE_FORMATS, CorruptValueError, ObjectStore, StoreError, UntrustedValue

if TYPE_CHECKING:
    from .runs import RunStore

RECORD_FORMAT = 1
SKEW_S = 10 * 60.0  # a sync re-lists keys stamped up to this long before its previous listing began (its clock)
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
            body = {"record": record, "sig": _sign(self.key, _canonical(record))}
            self.backend.put_bytes(key, json.dumps(body).encode())
        store.mark_remote_seen(str(self.uri), [(key, run_id)])
        return key

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
            body = {"record": record, "sig": _sign(self.key, _canonical(record))}
            self.backend.put_bytes(key, json.dumps(body).encode())
        return key

    def write_index(self, store: RunStore, foreign: dict[str, dict[str, Any]] | None = None) -> str | None:
        """Write one compacted index of every run record in the store (each record signed), so a new kernel's
        first sync is one GET instead of one per run; older indexes are removed. Runs this home indexes are
        exported from it; ``foreign`` (record key -> record) are the others, read from the store. An index lists
        only the keys whose record it holds. The caller holds the gc lease (no run publishes meanwhile). Returns
        the index's key."""
        foreign = foreign or {}
        seen = {k: r for k, r in store.remote_record_runs(str(self.uri)).items() if k not in foreign}
        entries, held = [], set()
        for run_id in sorted(set(seen.values())):
            if store.get_run(run_id) is not None:
                record = store.export_run(run_id)
                entries.append({"record": record, "sig": _sign(self.key, _canonical(record))})
                held.add(run_id)
        seen = {k: r for k, r in seen.items() if r in held}
        for key, record in sorted(foreign.items()):
            entries.append({"record": record, "sig": _sign(self.key, _canonical(record))})
            seen[key] = record["run"]["id"]
        if not seen:
            return None
        covers = max(seen)
        body = {
            "format": RECORD_FORMAT,
            "covers": covers,
            "listed_at": time.time(),  # the keys were listed under the gc lease, before this moment
            "keys": sorted(seen.items()),
            "runs": entries,
        }
        stamp = covers.removeprefix("runs/")[:13]
        key = f"index/{stamp}-{uuid.uuid4().hex[:8]}.json.gz"
        self.backend.put_bytes(key, gzip.compress(json.dumps(body).encode(), 6))
        for blob in list(self.backend.list("index/")):
            if blob.key != key:
                self.backend.delete(blob.key)
        return key

    def _first_sync(self, store: RunStore) -> int:
        """An empty home starts from the newest compacted index, if there is one."""
        indexes = sorted(b.key for b in self.backend.list("index/") if b.key.endswith(".json.gz"))
        data = self.backend.get_bytes(indexes[-1]) if indexes else None
        if data is None:
            return 0
        try:
            body = json.loads(gzip.decompress(data))
            entries, keys = body["runs"], body["keys"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        try:
            records = [self._read_record("", json.dumps(e).encode()) for e in entries]
            marks = [(str(k), str(r)) for k, r in keys]
        except (TypeError, ValueError):
            return 0
        if any(r is None for r in records):  # not this team key's index: each record is read on its own instead
            print(
                f"nbmagic: the run index {indexes[-1]} of {self.uri} does not verify with the team key"
                " ($NBMAGIC_STORE_KEY): reading each run record instead",
                file=sys.stderr,
            )
            return 0
        imported = store.import_runs(records)
        store.mark_remote_seen(str(self.uri), marks)
        listed_at = body.get("listed_at")
        if _number(listed_at):
            store.set_remote_listed_at(str(self.uri), float(listed_at))
        return imported

    def sync(self, store: RunStore, workers: int = 16) -> int:
        """Import the records not seen yet into the local index; returns how many runs were imported."""
        uri = str(self.uri)
        first = 0
        if store.remote_watermark(uri) is None:
            first = self._first_sync(store)
        # keys carry their writer's clock, so the newest key seen says nothing about the others: a sync lists the
        # keys stamped after its previous listing began by this machine's clock, less SKEW_S, and compares them
        # with those seen (a writer's clock ahead hides nothing; one up to SKEW_S behind neither)
        began, since = time.time(), store.remote_listed_at(uri)
        start = "" if since is None else f"runs/{max(0, int((since - SKEW_S) * 1000)):013d}"
        listed = [b.key for b in self.backend.list("runs/", start) if b.key.endswith(".json")]
        seen = store.remote_seen(uri, listed)
        fresh = [k for k in listed if k not in seen]
        if not fresh:
            store.set_remote_listed_at(uri, began)
            return first
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(workers, len(fresh))) as pool:
            bodies = list(pool.map(self.backend.get_bytes, fresh))
        records, marks, skipped, malformed = [], [], [], []
        for key, data in zip(fresh, bodies):
            record, why = self._parse(data)
            if record is None:  # one not signed with this key is read again next time (the key may be fixed)
                (malformed if why == "malformed" else skipped).append(key)
                if why == "malformed":
                    marks.append((key, None))
                continue
            records.append(record)
            marks.append((key, record["run"]["id"]))
        imported = store.import_runs(records)
        store.mark_remote_seen(uri, marks)
        # a record skipped for its signature stays inside the next sync's window (the key may be fixed)
        stamps = [int(k.removeprefix("runs/")[:13]) / 1000 for k in skipped if k.removeprefix("runs/")[:13].isdigit()]
        store.set_remote_listed_at(uri, min([began, *(t + SKEW_S - 1 for t in stamps)]))
        if skipped:
            print(
                f"nbmagic: skipped {len(skipped)} run record(s) in {self.uri} not signed with the team key"
                f" ($NBMAGIC_STORE_KEY), e.g. {skipped[0]}",
                file=sys.stderr,
            )
        if malformed:
            print(
                f"nbmagic: skipped {len(malformed)} malformed run record(s) in {self.uri} (a field missing or of"
                f" the wrong type), e.g. {malformed[0]}",
                file=sys.stderr,
            )
        return first + imported

    def _read_record(self, key: str, data: bytes | None) -> dict[str, Any] | None:
        """The record in ``data`` if it is well formed and (with a team key) signed with it; else None."""
        return self._parse(data)[0]

    def _parse(self, data: bytes | None) -> tuple[dict[str, Any] | None, str]:
        """(record, "") or (None, why): "missing", "malformed" or "unsigned"."""
        if data is None:
            return None, "missing"
        try:
            body = json.loads(data)
            record = body["record"]
        except (ValueError, KeyError, TypeError):
            return None, "malformed"
        if self.key and not _verified(self.key, _canonical(record), body.get("sig")):
            return None, "unsigned"
        if not well_formed(record):
            return None, "malformed"
        return record, ""

    # ------------------------------------------------------------------ leases
    def _live(self, prefix: str, mine: str = "") -> list[str]:
        now = time.time()
        return [b.key for b in self.backend.list(prefix) if b.key != mine and now - b.modified < STALE_S]

    @contextlib.contextmanager
    def lease(self, role: str) -> Iterator[None]:
        """Hold a ``writer`` lease (many at once) or the ``gc`` lease (alone): each side writes its lease, then
        looks for the other's; the store's strong consistency means at least one of two racing sides sees the
        other and steps back. A writer waits for a gc; a gc gives way to writers (:class:`StoreBusy`)."""
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
