"""gc of the shared store: the records of runs the policy dropped, then values no remaining run refers to.

Runs under the store's gc lease (:meth:`RemoteStore.lease`): while it is held no run publishes, and a gc
never starts while one does (it gives way with one line), so a value a run is about to refer to is never
collected. The policy is the local one (``nbmagic.store.gc``), applied to the local index right after a full
sync, so it sees every run of the team. A value's files are removed manifest first (readers see it whole or not
at all); files left by an interrupted upload (no manifest) and leases of dead processes go too. Last, it
writes a compacted index of the remaining runs (``index/``), which a new kernel's first sync reads in one GET.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..units import format_size
from . import shared_cache
from .backends import RemoteError
from .remote import STALE_S, record_hashes
from .runs import RunStore


@dataclass
class SharedSweep:
    records: int = 0
    values: int = 0
    bytes: int = 0
    leftovers: int = 0

    def line(self, uri: str, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        return (
            f"shared store {uri}: {verb} {self.records} run records, {self.values} values"
            f" ({format_size(self.bytes)}), {self.leftovers} leftover files"
        )


def sweep(store: RunStore, dropped: set[str], dry_run: bool = False, grace: float = 60.0) -> SharedSweep:
    """Remove from the shared store what the local gc dropped; the caller holds the gc lease."""
    remote, found = store.remote, SharedSweep()
    uri, now = str(remote.uri), time.time()
    seen = store.remote_record_runs(uri)
    keep = store.referenced_hashes(exclude=dropped)
    doomed, foreign = [], {}
    for blob in list(remote.backend.list("runs/")):
        if not blob.key.endswith(".json"):
            continue
        run_id = seen.get(blob.key)
        if run_id in dropped:
            doomed.append(blob.key)
        elif run_id is None or store.get_run(run_id) is None:  # not in this home's index: read the record itself
            record = remote._read_record(blob.key, remote.backend.get_bytes(blob.key))
            if record is None:
                raise RemoteError(
                    f"gc: run record {blob.key} in {uri} is unreadable, malformed or not signed with the team key"
                    " ($NBMAGIC_STORE_KEY): the values it refers to cannot be known, so nothing was removed"
                )
            foreign[blob.key] = record
            keep |= record_hashes(record)
    for key in doomed:
        found.records += 1
        if not dry_run:
            remote.backend.delete(key)
    found.leftovers += shared_cache.sweep(remote, dry_run, grace, dropped)  # entries and logs of runs gone
    folders: dict[str, list] = {}
    for blob in remote.backend.list("objects/"):
        parts = blob.key.split("/")
        if len(parts) == 4:
            folders.setdefault(parts[2], []).append(blob)
    for digest, blobs in folders.items():
        if digest in keep or any(now - b.modified < grace for b in blobs):
            continue
        whole = any(b.key.endswith("/manifest.json") for b in blobs)
        if whole:
            found.values += 1
            found.bytes += sum(b.size for b in blobs)
        else:
            found.leftovers += len(blobs)
        if not dry_run:
            remote.drop_object(digest)
    for blob in list(remote.backend.list("locks/")):
        if now - blob.modified > STALE_S and not dry_run:
            remote.backend.delete(blob.key)
            found.leftovers += 1
    if not dry_run:
        remote.write_index(store, foreign)  # a new kernel's first sync reads this one object
    return found
