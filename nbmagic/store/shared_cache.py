"""Cache entries shared through the team's store: a step computed in one home is a cache hit in every other.

Layout under the store URI's prefix: ``cache/<key[:2]>/<key>.json``, one signed entry per cache key (the local
runner's key, so interactive reuse and runs find the same ones), written after the run that computed it is
published. An entry names its run and step, the values it assigned (by hash), its metrics, what it could not
keep and the fingerprints of the values carried from ordinary cells it was computed with.

A local miss looks the key up there, and a shared hit is taken only when it is safe:

* a team key (``$NBMAGIC_STORE_KEY``) is set: entries are signed and verified (without one, shared hits are
  off, said once);
* the step has stored outputs the caller needs, and no step runs ``--after`` it (ordering that carries no
  value means the step acts through files or services the key does not cover: those always run);
* the entry was computed on the same platform (``sys.platform``, machine, Python major.minor);
* the entry names a run this home can import whose execution has that very key, the same output names and
  hashes, the same values not kept, and (where the run has them) the same metrics;
* its outputs, metrics and carried fingerprints are what the caller needs, checked before any value is
  pulled; then every value pulls and checks against its hash (and signature).

Anything else is a miss (said in one line when something is wrong); the step runs. A hit is said in one line
naming the run (and host) it came from, and written into the local ``cache`` table pointing at the imported
execution, so lineage shows the run that computed it. A store that cannot be reached is not asked again for
a quiet minute.
"""

from __future__ import annotations

import json
import platform
import re
import socket
import sys
import time
from dataclasses import dataclass, field
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
_down: dict[str, float] = {}  # URI -> monotonic time until which its shared cache is not asked
_gone: set[tuple[str, str, str]] = set()  # (URI, key, run) of entries whose run record is not to be had
_off_said: set[str] = set()  # URIs whose "no team key" line was said
_published: set[tuple[str, str, str, int]] = set()  # (home's store, URI, key, execution) written here


@dataclass(frozen=True)
class Wanted:
    """What the caller would take from a shared entry for ``step``: checked before any value is pulled."""

    step: str
    needed: frozenset[str]  # the stored outputs it takes from the entry
    metrics: frozenset[str] = frozenset()
    carried: dict[str, str | None] | None = field(default=None, hash=False)  # fingerprints the entry must have
    all_kept: bool = False  # an entry with a value not kept is of no use
    followed: bool = False  # another step runs --after it: never a shared hit


def platform_tag() -> dict[str, str]:
    """What a value computed here depends on beyond its code and inputs, as far as it can be told."""
    return {
        "system": sys.platform,
        "machine": platform.machine(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }


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
    if not remote.key:  # no home could verify them: shared hits need the team key
        return 0
    for entry in store.cache_entries_of_run(run_id):
        mark = (str(store.root), str(remote.uri), entry.key, entry.execution_id)
        if mark in _published:  # a session run is published again after each cell: its earlier entries are there
            continue
        if not entry.outputs:  # a step that stores nothing acts some other way: never a shared hit
            continue
        body = {
            "format": FORMAT,
            "key": entry.key,
            "run": run_id,
            "step": entry.step,
            "outputs": {
                name: {
                    **{k: ref.get(k) for k in ("hash", "type", "format", "size", "name")},
                    **({"alias": ref["alias"]} if ref.get("alias") else {}),  # loads as a part of another value
                    # a kernel must run the step: its values share objects that load as copies
                    **({"kernel_reuse": str(ref["kernel_reuse"])} if ref.get("kernel_reuse") else {}),
                    **({"cow": ref["cow"]} if type(ref.get("cow")) is bool else {}),  # pandas' mode it ran with
                }
                for name, ref in entry.outputs.items()
            },
            "metrics": dict(entry.metrics),
            "not_kept": {name: _shareable_reason(why) for name, why in entry.not_kept.items()},
            "carried": entry.carried,
            "platform": platform_tag(),
            "host": socket.gethostname()[:200],
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
    tag, host = body.get("platform"), body.get("host")
    if not isinstance(tag, dict) or not all(isinstance(v, str) for v in tag.values()):
        return False
    if host is not None and not isinstance(host, str):
        return False
    return carried is None or (
        isinstance(carried, dict) and all(v is None or isinstance(v, str) for v in carried.values())
    )


def _execution(store: RunStore, run_id: str, step: str) -> dict[str, Any] | None:
    for row in store.step_rows(run_id):
        if row["step"] == step:
            return row
    return None


def _down_now(remote: Any) -> bool:
    return _down.get(str(remote.uri), 0.0) > time.monotonic()


def _unreachable(remote: Any, exc: Exception) -> None:
    """The store failed: no shared lookup for a quiet period (each step would pay the retries), said once."""
    _down[str(remote.uri)] = time.monotonic() + _QUIET_S
    _say(remote, f"{exc} (the shared cache is not consulted for {int(_QUIET_S)} s: the steps run)", once=True)


def _fits(body: dict[str, Any], wanted: Wanted) -> bool:
    """The entry holds what the caller needs (told from the entry alone, before anything is pulled)."""
    if not wanted.needed <= set(body["outputs"]) or not wanted.metrics <= set(body["metrics"]):
        return False
    if wanted.all_kept and body["not_kept"]:
        return False
    if wanted.carried is not None:
        stored = body["carried"] or {}
        if any(digest is None or stored.get(name) != digest for name, digest in wanted.carried.items()):
            return False
    return True


def _matches_record(store: RunStore, body: dict[str, Any], row: dict[str, Any], key: str) -> bool:
    """The run's own record says what the entry says: key, output names and hashes, values not kept, metrics."""
    run_id, step = body["run"], body["step"]
    recorded = store.step_values(run_id, step)
    if row.get("cache_key") != key or set(recorded) != set(body["outputs"]):
        return False
    if any(recorded[name].get("hash") != ref["hash"] for name, ref in body["outputs"].items()):
        return False
    try:
        properties = json.loads(row.get("properties") or "{}")
    except ValueError:
        return False
    not_kept = properties.get("not_kept") if isinstance(properties, dict) else None
    if isinstance(not_kept, dict) and {n: _shareable_reason(w) for n, w in not_kept.items()} != body["not_kept"]:
        return False
    record = store.get_run(run_id)
    metrics = record.metrics if record is not None else {}
    return all(metrics.get(name, value) == value for name, value in body["metrics"].items())


def lookup(store: RunStore, key: str, wanted: Wanted | None = None) -> CacheEntry | None:
    """The shared store's entry under ``key`` for ``wanted``, verified and with its values pulled here; None on a
    miss (and always without ``wanted``: a shared hit is only taken for a step whose needs are known)."""
    from .objects import CorruptValueError, UntrustedValue
    from .remote import _canonical, _verified
    from .runs import CacheEntry

    remote = store.remote
    if remote is None or wanted is None or not _KEY.fullmatch(key or ""):
        return None
    uri = str(remote.uri)
    if not remote.key:
        if uri not in _off_said:
            _off_said.add(uri)
            _say(
                remote,
                f"shared cache hits from {uri} are off: no team key ($NBMAGIC_STORE_KEY) is set here, so an entry"
                " cannot be verified (steps run, or come from this home's own cache)",
            )
        return None
    if wanted.followed or _down_now(remote):
        return None  # a step another runs --after acts through side effects: it always runs
    where = f"the shared cache entry {key[:12]} in {uri}"
    try:
        data = remote.backend.get_bytes(entry_key(key))
    except RemoteError as exc:
        _unreachable(remote, exc)
        return None
    if data is None:
        return None
    try:
        wrapper = json.loads(data)
        body, signature = wrapper["entry"], wrapper.get("sig")
    except (ValueError, KeyError, TypeError):
        _say(remote, f"{where} is unreadable: not used, the step runs")
        return None
    if not _verified(remote.key, _canonical(body), signature):
        _say(remote, f"{where} is not signed with the team key ($NBMAGIC_STORE_KEY): not used, the step runs")
        return None
    if not _well_formed(body, key):
        _say(remote, f"{where} is malformed: not used, the step runs")
        return None
    run_id, step = body["run"], body["step"]
    where = f"{where} (step {step!r} of run {run_id})"
    if body["platform"] != platform_tag():
        there = body["platform"]
        _say(
            remote,
            f"{where} was computed on {there.get('system')} {there.get('machine')} Python {there.get('python')},"
            " not this platform: not used, the step runs",
        )
        return None
    if not body["outputs"] or not _fits(body, wanted) or (uri, key, run_id) in _gone:  # stores nothing: it runs
        return None
    row = _execution(store, run_id, step)
    if row is None:
        store.sync(force=True)
        row = _execution(store, run_id, step)
    if row is None:  # its run was collected (or its record did not verify: the sync said so)
        _gone.add((uri, key, run_id))  # not synced again for this entry by this process
        return None
    if not _matches_record(store, body, row, key):
        _say(remote, f"{where} does not match the run's record: not used, the step runs")
        return None
    try:
        for name, ref in body["outputs"].items():
            if not store.objects.exists(ref["hash"]) and not remote.pull_object(store.objects, ref["hash"], name):
                return None  # collected since: a plain miss
    except RemoteError as exc:
        _unreachable(remote, exc)
        return None
    except (CorruptValueError, UntrustedValue, StoreError) as exc:
        _say(remote, f"{where}: {exc}; not used, the step runs")
        return None
    outputs = {name: {**ref, "name": name} for name, ref in body["outputs"].items()}
    store.cache_put(key, step, int(row["id"]), outputs, body["metrics"], body["not_kept"], carried=body["carried"])
    host = f" on {body['host']}" if body.get("host") else ""
    _say(remote, f"step {wanted.step!r} taken from the shared cache: computed in run {run_id}{host} ({uri})")
    return CacheEntry(key, step, int(row["id"]), outputs, body["metrics"], body["not_kept"], body["carried"])


def record_run_id(key: str) -> str:
    """The run id in a run record's key ``runs/<ms>-<run id>[-trial].json``."""
    name = key.removeprefix("runs/").removesuffix(".json")[14:]
    return name.removesuffix("-trial")


def sweep(
    remote: Any, dry_run: bool = False, grace: float = 60.0, gone: set[str] = frozenset(), live: set[str] | None = None
) -> int:
    """Remove the cache entries (``cache/``, ``podcache/``) and logs of runs with no record left (``gone``: those gc drops now; ``live``: the runs
    with a record, loose or in a segment, when the caller read them all); the caller holds the gc lease, so no
    record is being written. Returns how many files it removed (or would)."""
    if live is None:
        live = {record_run_id(b.key) for b in remote.backend.list("runs/") if b.key.endswith(".json")}
    live = set(live) - set(gone)
    from concurrent.futures import ThreadPoolExecutor

    now, removed = time.time(), 0
    # the local runner's entries, and those compiled steps write in their pods (runtime.podcache): same shape
    blobs = [b for prefix in ("cache/", "podcache/") for b in remote.backend.list(prefix) if now - b.modified >= grace]
    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(remote.backend.get_bytes, [b.key for b in blobs]))
    for blob, data in zip(blobs, bodies):
        try:
            run_id = json.loads(data or b"null")["entry"]["run"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: a miss on lookup, left for whoever can tell
        if run_id not in live:
            removed += 1
            if not dry_run:
                remote.backend.delete(blob.key)
    from .shared_logs import sweep as sweep_logs

    return removed + sweep_logs(remote, live, dry_run, grace)
