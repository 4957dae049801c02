"""Cache entries shared through the team's store: a step computed in one home is a cache hit in every other.

Layout under the store URI's prefix: ``cache/<key[:2]>/<key>.json``, one signed entry per cache key (the local
runner's key, so interactive reuse and runs find the same ones), written after the run that computed it is
published. An entry names its run and step, the values it assigned (by hash), its metrics, what it could not
keep and the fingerprints of the values carried from ordinary cells it was computed with.

A local miss looks the key up there. The entry is taken only when it verifies: signed with the team key (when
one is set), naming a run this home can import whose execution has that very key and those very outputs, and
every value pulls and checks against its hash (and signature). Anything else is a miss, said in one line; the
step runs. A hit is written into the local ``cache`` table pointing at the imported execution, so lineage shows
the run that computed it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from .backends import RemoteError
from .objects import StoreError

if TYPE_CHECKING:
    from .runs import CacheEntry, RunStore

FORMAT = 1
_KEY = re.compile(r"[0-9a-f]{64}")
_HASH = re.compile(r"[0-9a-f]{16,128}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SECRET = "holds a secret"
_QUIET_S = 60.0  # an unreachable store is said once a minute, not once per step
_said: dict[str, float] = {}
_published: set[tuple[str, str, str, int]] = set()  # (home's store, URI, key, execution) written here


def entry_key(key: str) -> str:
    return f"cache/{key[:2]}/{key}.json"


def _say(remote: Any, line: str, once: bool = False) -> None:
    if once:
        uri = str(remote.uri)
        if time.monotonic() - _said.get(uri, -_QUIET_S) < _QUIET_S:
            return
        _said[uri] = time.monotonic()
    print(f"nbmagic: {line}", file=sys.stderr)


def _shareable_reason(reason: Any) -> str:
    """What a value that was not kept is said to be, without the error text (it could quote the value)."""
    text = str(reason)
    return SECRET if text == SECRET else text.split(":", 1)[0][:200]


def publish_run(store: RunStore, run_id: str) -> int:
    """Write the cache entries of the steps ``run_id`` computed (after its record is published); returns how many."""
    from .remote import _canonical, _sign

    remote = store.remote
    written = 0
    for entry in store.cache_entries_of_run(run_id):
        mark = (str(store.root), str(remote.uri), entry.key, entry.execution_id)
        if mark in _published:  # a session run is published again after each cell: its earlier entries are there
            continue
        body = {
            "format": FORMAT,
            "key": entry.key,
            "run": run_id,
            "step": entry.step,
            "outputs": {
                name: {k: ref.get(k) for k in ("hash", "type", "format", "size", "name")}
                for name, ref in entry.outputs.items()
            },
            "metrics": dict(entry.metrics),
            "not_kept": {name: _shareable_reason(why) for name, why in entry.not_kept.items()},
            "carried": entry.carried,
        }
        data = json.dumps({"entry": body, "sig": _sign(remote.key, _canonical(body))}).encode()
        remote.backend.put_bytes(entry_key(entry.key), data)
        _published.add(mark)
        written += 1
    return written


def _well_formed(body: Any, key: str) -> bool:
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("key") != key:
        return False
    if not all(isinstance(body.get(k), str) and _NAME.fullmatch(body[k]) for k in ("run", "step")):
        return False
    outputs, metrics, not_kept, carried = (body.get(k) for k in ("outputs", "metrics", "not_kept", "carried"))
    if not isinstance(outputs, dict) or not all(
        isinstance(ref, dict) and isinstance(ref.get("hash"), str) and _HASH.fullmatch(ref["hash"])
        for ref in outputs.values()
    ):
        return False
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        return False
    if not isinstance(not_kept, dict) or not all(isinstance(v, str) for v in not_kept.values()):
        return False
    return carried is None or (
        isinstance(carried, dict) and all(v is None or isinstance(v, str) for v in carried.values())
    )


def _execution(store: RunStore, run_id: str, step: str) -> dict[str, Any] | None:
    for row in store.step_rows(run_id):
        if row["step"] == step:
            return row
    return None


def lookup(store: RunStore, key: str) -> CacheEntry | None:
    """The shared store's entry under ``key``, verified and with its values pulled here; None on a miss."""
    from .objects import CorruptValueError, UntrustedValue
    from .remote import _canonical, _verified
    from .runs import CacheEntry

    remote = store.remote
    if remote is None or not _KEY.fullmatch(key or ""):
        return None
    where = f"the shared cache entry {key[:12]} in {remote.uri}"
    try:
        data = remote.backend.get_bytes(entry_key(key))
    except RemoteError as exc:
        _say(remote, f"{exc} (the step's shared cache is not consulted: it runs)", once=True)
        return None
    if data is None:
        return None
    try:
        wrapper = json.loads(data)
        body, signature = wrapper["entry"], wrapper.get("sig")
    except (ValueError, KeyError, TypeError):
        _say(remote, f"{where} is unreadable: not used, the step runs")
        return None
    if remote.key and not _verified(remote.key, _canonical(body), signature):
        _say(remote, f"{where} is not signed with the team key ($NBMAGIC_STORE_KEY): not used, the step runs")
        return None
    if not _well_formed(body, key):
        _say(remote, f"{where} is malformed: not used, the step runs")
        return None
    run_id, step = body["run"], body["step"]
    where = f"{where} (step {step!r} of run {run_id})"
    row = _execution(store, run_id, step)
    if row is None:
        store.sync(force=True)
        row = _execution(store, run_id, step)
    if row is None:  # its run was collected (or its record did not verify: the sync said so)
        return None
    recorded = store.step_values(run_id, step)
    if row.get("cache_key") != key or any(
        (recorded.get(name) or {}).get("hash") != ref["hash"] for name, ref in body["outputs"].items()
    ):
        _say(remote, f"{where} does not match the run's record: not used, the step runs")
        return None
    try:
        for name, ref in body["outputs"].items():
            if not store.objects.exists(ref["hash"]) and not remote.pull_object(store.objects, ref["hash"], name):
                return None  # collected since: a plain miss
    except (CorruptValueError, UntrustedValue, StoreError, RemoteError) as exc:
        _say(remote, f"{where}: {exc}; not used, the step runs")
        return None
    outputs = {name: {**ref, "name": name} for name, ref in body["outputs"].items()}
    store.cache_put(key, step, int(row["id"]), outputs, body["metrics"], body["not_kept"], carried=body["carried"])
    return CacheEntry(key, step, int(row["id"]), outputs, body["metrics"], body["not_kept"], body["carried"])


def record_run_id(key: str) -> str:
    """The run id in a run record's key ``runs/<ms>-<run id>[-trial].json``."""
    name = key.removeprefix("runs/").removesuffix(".json")[14:]
    return name.removesuffix("-trial")


def sweep(remote: Any, dry_run: bool = False, grace: float = 60.0, gone: set[str] = frozenset()) -> int:
    """Remove the entries and logs of runs with no record left (``gone``: those gc drops now); the caller holds
    the gc lease, so no record is being written. Returns how many files it removed (or would)."""
    live = {record_run_id(b.key) for b in remote.backend.list("runs/") if b.key.endswith(".json")} - set(gone)
    now, removed = time.time(), 0
    for blob in list(remote.backend.list("cache/")):
        if now - blob.modified < grace:
            continue
        try:
            run_id = json.loads(remote.backend.get_bytes(blob.key) or b"null")["entry"]["run"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: a miss on lookup, left for whoever can tell
        if run_id not in live:
            removed += 1
            if not dry_run:
                remote.backend.delete(blob.key)
    from .shared_logs import sweep as sweep_logs

    return removed + sweep_logs(remote, live, dry_run, grace)
