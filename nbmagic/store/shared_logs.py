"""Step logs shared through the team's store, so a run's printed output reads the same from every home.

Layout under the store URI's prefix::

    logs/blobs/<h[:2]>/<h>       a log's bytes, content-addressed (sha256), written only if absent
    logs/runs/<run id>.json      step -> {hash, size, cut}, signed with the team key, written after the blobs

A log is published with the step's ``--secret`` values masked (masked here when the step ended, whatever
its outcome, and again when published),
bounded to ``$NBMAGIC_SHARED_LOG_CAP`` (default 2 MB: its first and last halves, the cut marked), and with
the store's own credentials masked should a step have printed them. A log read from another home is checked
against its hash and the index's signature, then kept under that home's ``runs/<run id>/<step>.log``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends import RemoteError

if TYPE_CHECKING:
    from .runs import RunStore

FORMAT = 1
CAP_ENV = "NBMAGIC_SHARED_LOG_CAP"
DEFAULT_CAP = 2 * 10**6
# credentials of the store itself, never published even if a step printed them
_CREDENTIALS = ("NBMAGIC_STORE_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# a Google service account's key file: the secrets it holds (its path is no secret)
_GOOGLE_FILE = "GOOGLE_APPLICATION_CREDENTIALS"
_GOOGLE_FIELDS = ("private_key", "private_key_id", "client_secret", "refresh_token")
_secrets: set[str] = set()  # values of steps' --secret variables seen in this process
_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def shared_log_cap() -> int:
    text = os.environ.get(CAP_ENV, "").strip()
    if not text:
        return DEFAULT_CAP
    from .gc import parse_size

    return parse_size(text, f"${CAP_ENV}")


def bounded(data: bytes, cap: int) -> tuple[bytes, int]:
    """``data`` cut to its first and last ``cap / 2`` bytes with the cut marked; (bytes, bytes cut)."""
    if len(data) <= cap:
        return data, 0
    half = cap // 2
    cut = len(data) - 2 * half
    marker = f"\n… [{cut} bytes cut: the step's log was over the {cap} byte cap for sharing (${CAP_ENV})] …\n"
    return data[:half] + marker.encode() + data[len(data) - half :], cut


def remember_secrets(values: tuple[str, ...] | list[str]) -> None:
    """Note the values of a step's ``--secret`` variables: every log this process publishes has them masked."""
    _secrets.update(v for v in values if len(v) >= 4)


def _credential_values() -> list[str]:
    values = [os.environ.get(name, "") for name in _CREDENTIALS]
    path = os.environ.get(_GOOGLE_FILE, "")
    if path:
        try:
            info = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict):
            for field in _GOOGLE_FIELDS:
                value = info.get(field)
                if isinstance(value, str):
                    values.append(value)
                    # a printed PEM key: each of its base64 lines on its own
                    values.extend(line for line in value.splitlines() if len(line) >= 16 and "-----" not in line)
    return values


def _masked(data: bytes, secrets: tuple[str, ...] | list[str] = ()) -> bytes:
    """``data`` with the store's credentials, the step's secrets and those seen in this process masked."""
    values = sorted({*_credential_values(), *secrets, *_secrets}, key=len, reverse=True)  # longest first
    for value in values:
        if len(value) >= 4:
            data = data.replace(value.encode(), b"***")
    return data


def _step_secrets(row: dict[str, Any]) -> list[str]:
    """The values of the step's ``--secret`` variables and ``--secret-file`` mounts as found here (their names
    and paths are in its record)."""
    try:
        properties = json.loads(row.get("properties") or "{}")
        names, files = properties.get("secret_env") or [], properties.get("secret_files") or []
    except (ValueError, AttributeError):
        return []
    found = [os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)]
    paths = [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    if paths:
        from ..runtime.secret_files import secret_file_values

        found.extend(secret_file_values(paths))
    return found


# escape sequences (CSI, OSC, and two-character ones), then any other control character but newline and tab
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` safe to write to a terminal: escape and control sequences removed (newlines and tabs kept,
    a carriage return before a newline dropped, any other one made a newline so no line hides another)."""
    text = _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _CONTROLS.sub("", text)


def _blob_key(digest: str) -> str:
    return f"logs/blobs/{digest[:2]}/{digest}"


def _index_key(run_id: str) -> str:
    return f"logs/runs/{run_id}.json"


def _local_path(store: RunStore, run_id: str, row: dict[str, Any]) -> Path | None:
    for candidate in (row.get("log"), store.root / "runs" / run_id / f"{row['step']}.log"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def publish_run(store: RunStore, run_id: str) -> int:
    """Upload the step logs ``run_id`` has here, then its signed log index; returns how many logs it lists."""
    from .remote import _canonical, _sign

    remote = store.remote
    steps: dict[str, dict[str, Any]] = {}
    cap = shared_log_cap()
    for row in store.step_rows(run_id):
        path = _local_path(store, run_id, row)
        if path is None:
            continue
        try:
            data, cut = bounded(_masked(path.read_bytes(), _step_secrets(row)), cap)
        except OSError:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if not remote.backend.exists(_blob_key(digest)):
            remote.backend.put_bytes(_blob_key(digest), data, if_absent=True)
        steps[row["step"]] = {"hash": digest, "size": len(data), "cut": cut}
    if steps:
        body = {"format": FORMAT, "run": run_id, "steps": steps}
        data = json.dumps({"index": body, "sig": _sign(remote.key, _canonical(body))}).encode()
        remote.backend.put_bytes(_index_key(run_id), data)
    return len(steps)


def _say(line: str) -> None:
    print(f"nbmagic: {line}", file=sys.stderr)


def step_log(store: RunStore, run_id: str, step: str) -> str | None:
    """What ``step`` printed in ``run_id``: the log here, else the one published to the shared store (checked,
    then kept here). None when neither has it (a step taken from the cache prints nothing)."""
    from .remote import _canonical, _verified

    row = next((r for r in store.step_rows(run_id) if r["step"] == step), None)
    if row is None and store.remote is not None:  # a run published since the last sync
        store.sync(force=True)
        row = next((r for r in store.step_rows(run_id) if r["step"] == step), None)
    if row is None:
        return None
    path = _local_path(store, run_id, row)
    if path is not None:
        return path.read_text(errors="replace")
    remote = store.remote
    if remote is None or not _NAME.fullmatch(run_id) or not _NAME.fullmatch(step):
        return None
    where = f"the log of step {step!r} of run {run_id} in {remote.uri}"
    try:
        raw = remote.backend.get_bytes(_index_key(run_id))
        if raw is None:
            return None
        try:
            wrapper = json.loads(raw)
            body, signature = wrapper["index"], wrapper.get("sig")
            ref = body["steps"].get(step) if body.get("run") == run_id else None
        except (ValueError, KeyError, TypeError, AttributeError):
            _say(f"{where}: its index is unreadable")
            return None
        if remote.key and not _verified(remote.key, _canonical(body), signature):
            _say(f"{where}: its index is not signed with the team key ($NBMAGIC_STORE_KEY); not shown")
            return None
        if ref is None:
            return None
        digest = ref.get("hash") if isinstance(ref, dict) else None
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            _say(f"{where}: its index is malformed")
            return None
        data = remote.backend.get_bytes(_blob_key(digest))
    except RemoteError as exc:
        _say(f"{exc} (the log of step {step!r} of run {run_id} is not here)")
        return None
    if data is None or hashlib.sha256(data).hexdigest() != digest:
        _say(f"{where} is {'missing' if data is None else 'corrupt (its hash does not match)'}; not shown")
        return None
    target = store.run_dir(run_id) / f"{step}.log"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
        store.set_step(run_id, step, row["state"], log=str(target))
    except OSError:
        tmp.unlink(missing_ok=True)  # only a copy: the text is still shown
    return data.decode(errors="replace")


def sweep(remote: Any, live: set[str], dry_run: bool = False, grace: float = 60.0) -> int:
    """Remove the log indexes of runs with no record left, then the logs no remaining index lists (older than
    ``grace``: one being published has its index written after it). Returns how many files it removed."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    now, removed = time.time(), 0
    indexes = [b for b in remote.backend.list("logs/runs/") if b.key.endswith(".json")]
    kept = []
    for blob in indexes:
        if blob.key.removeprefix("logs/runs/").removesuffix(".json") in live or now - blob.modified < grace:
            kept.append(blob.key)
            continue
        removed += 1
        if not dry_run:
            remote.backend.delete(blob.key)
    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(remote.backend.get_bytes, kept))
    listed: set[str] = set()
    for key, data in zip(kept, bodies):
        try:
            listed |= {ref["hash"] for ref in json.loads(data or b"null")["index"]["steps"].values()}
        except (ValueError, KeyError, TypeError, AttributeError):
            # an index that cannot be read lists nothing anyone can read (a log is only found through its index):
            # skipped, so the others' logs are still collected
            _say(f"{remote.uri}: the log index {key} is unreadable; skipped by log gc")
            continue
    for blob in list(remote.backend.list("logs/blobs/")):
        if blob.key.rpartition("/")[2] not in listed and now - blob.modified >= grace:
            removed += 1
            if not dry_run:
                remote.backend.delete(blob.key)
    return removed
