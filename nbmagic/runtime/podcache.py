"""Cache hits through the shared store, taken inside a compiled step's pod (KFP's own caching stays off).

A step compiled with a store URI computes a key before its cell runs (:func:`pod_key`): a format tag, the step's
code and the notebook code it carries, its parameter values (canonical JSON), its inputs' content hashes (from
their marshal manifests) by name, its ``--inputs`` files' hashes, the outputs and metrics it must produce, the
values of its ``--env`` variables, the inputs it must not change in place (later steps read them from elsewhere),
and where it runs: Python version and implementation, ``sys.platform``,
machine, the installed distributions (a hash of the sorted ``*.dist-info``/``*.egg-info`` folder names on
``sys.path``, which carry the versions, and of the zips on it), nbmagic's runtime sources as loaded, and the image
the step was compiled for (``"image"`` in the store target). Modules baked into an image outside pip are seen only
through the image's name: a step relying on them under a reused tag should be compiled with ``--no-cache``. The key is not the local runner's (that one also follows the notebook's
local modules and asks each distribution's metadata, which a pod cannot do the same way): pod entries live
under their own prefix, and only pods read them.

Layout under the store URI's prefix: ``podcache/<key[:2]>/<key>.json`` holds ``{"entry": BODY, "sig": HMAC}``,
BODY = ``{"format", "key", "run", "step", "host", "values": {name: {hash, type, format, size}}, "metrics"}``:
the run and step that computed the values, every stored value of the step (its outputs and metric values) and
its metric numbers. It is written after that step's record, only if absent (replaced when the one found was
unusable), and only with the team key ``$NBMAGIC_STORE_KEY``, which signs it.

A hit is taken only when the step was compiled with caching on (no ``--no-cache``, no ``--secret`` or
``--secret-file``, no step runs ``--after`` it and it runs ``--after`` none, and it has outputs or metrics: the
compiler says so with ``"cache"`` in the store target), a team key is set, the entry verifies, is well formed,
is under this very key and holds every output and metric the step must produce, and every value pulls whole:
its manifest (signed with the team key unless its format runs no code) and files checked against its hash.
The step holds a writer lease on the store from before the lookup until the hit's record is written, so no gc
removes a value between its pull and the record that names it. Values are pulled into temporary folders first and moved into the step's output folders only once all of them
are whole: a failure leaves no output half written, says why in one line, and the step runs (a value whose
bytes do not match its hash loses its manifest in the store, as the local pull removes it, so the step uploads it
again; a value the pod cannot check, its hash algorithm unknown here or ``xxhash`` not installed, is a miss and
stays in the store; an entry that could not be used is replaced by the new one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import marshal
from .marshal.base import hasher
from .publish import MANIFEST, _sign

FORMAT = 1
TAG = "nbmagic-pod-cache-1"
SAFE_FORMATS = frozenset({"npy", "npy-scalar", "parquet"})  # formats that run no code when loaded
_KEY = re.compile(r"[0-9a-f]{64}")
_HASH = re.compile(r"[0-9a-f]{16,128}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}")
_PACKAGES: dict[tuple[str, ...], str] = {}  # sys.path -> the stamp of its distributions, once per process


class Miss(Exception):
    """The entry cannot be used: why, in one line; the step runs."""


def entry_key(key: str) -> str:
    return f"podcache/{key[:2]}/{key}.json"


def packages_stamp() -> str:
    """A hash of the distributions installed on ``sys.path`` (their metadata folders' names carry the versions)
    and of the zips on it (nbmagic's embedded runtime, eggs), by content."""
    entries = tuple(sys.path)
    if entries not in _PACKAGES:
        names: set[str] = set()
        for entry in entries:
            path = os.path.abspath(entry or ".")
            if os.path.isfile(path):  # a zip: its bytes, not its (temporary) path
                names.add("zip:" + _sha256_of(path))
                continue
            try:
                with os.scandir(path) as found:
                    names.update(e.name for e in found if e.name.endswith((".dist-info", ".egg-info")))
            except OSError:  # a missing folder
                continue
        _PACKAGES[entries] = hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()
    return _PACKAGES[entries]


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "unreadable"
    return digest.hexdigest()


_RUNTIME: list[str] = []


def runtime_stamp() -> str:
    """A hash of nbmagic's runtime sources as this process loaded them (installed or from the embedded zip):
    their paths under ``nbmagic/runtime/`` and their bytes."""
    if not _RUNTIME:
        digest = hashlib.sha256()
        archive = getattr(__loader__, "archive", None)  # zipimport: the runtime zip the component carries
        if archive:
            import zipfile

            with zipfile.ZipFile(archive) as zipped:
                names = sorted(n for n in zipped.namelist() if n.startswith("nbmagic/runtime/") and n.endswith(".py"))
                for name in names:
                    digest.update(name.removeprefix("nbmagic/runtime/").encode() + b"\0" + zipped.read(name) + b"\0")
        else:
            here = Path(__file__).resolve().parent
            for path in sorted(p for p in here.rglob("*.py") if "__pycache__" not in p.parts):
                digest.update(path.relative_to(here).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _RUNTIME.append(digest.hexdigest())
    return _RUNTIME[0]


def environment_tag(image: str | None = None) -> dict[str, str]:
    """What a value computed here depends on beyond the step's code and inputs, as far as a pod can tell: the
    image the step was compiled for too (its files outside pip are not seen otherwise)."""
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "system": sys.platform,
        "machine": platform.machine(),
        "packages": packages_stamp(),
        "runtime": runtime_stamp(),
        "image": image or "",
    }


def pod_key(
    code: str,
    prelude: str,
    parameters: dict[str, Any],
    inputs: dict[str, str],
    files: dict[str, str] | None,
    outputs: list[str] | tuple[str, ...],
    metrics: list[str] | tuple[str, ...],
    env: dict[str, str | None] | None = None,
    environment: dict[str, str] | None = None,
    watch: list[str] | tuple[str, ...] = (),
) -> str:
    """The step's key in the store's cache (see the module's docstring); ``inputs``: name -> value hash."""
    material = {
        "tag": TAG,
        "code": code,
        "prelude": prelude,
        "parameters": json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=repr),
        "inputs": dict(inputs),
        "files": dict(files or {}),
        "outputs": sorted(outputs),
        "metrics": sorted(metrics),
        "env": dict(env or {}),
        "watch": sorted(watch),  # inputs later steps read from elsewhere: running the step checks them
        "environment": environment if environment is not None else environment_tag(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def input_hashes(folders: dict[str, str]) -> dict[str, str]:
    """name -> content hash of each input value, from its marshal manifest."""
    return {name: str(marshal.read_manifest(folder, name)["hash"]) for name, folder in folders.items()}


def team_key() -> bytes | None:
    key = os.environ.get("NBMAGIC_STORE_KEY", "")
    return key.encode() if key else None


def _verified(data: bytes, signature: Any) -> bool:
    key = team_key()
    if not key or not isinstance(signature, (str, bytes)):
        return False
    text = signature.decode(errors="replace") if isinstance(signature, bytes) else signature
    return hmac.compare_digest(text.strip(), hmac.new(key, data, hashlib.sha256).hexdigest())


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Hit:
    """An entry that verified, with its values pulled whole into temporary folders."""

    run: str
    step: str
    host: str
    refs: dict[str, dict[str, Any]]  # every stored value of the step: name -> {hash, type, format, size}
    metrics: dict[str, int | float]
    folders: dict[str, Path] = field(default_factory=dict)  # name -> its pulled marshal folder
    scratch: Path | None = None

    def discard(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _well_formed(body: Any, key: str) -> bool:
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("key") != key:
        return False
    if not all(isinstance(body.get(k), str) and _NAME.fullmatch(body[k]) for k in ("run", "step")):
        return False
    values, metrics, host = body.get("values"), body.get("metrics"), body.get("host")
    if not isinstance(values, dict) or not all(
        isinstance(name, str) and _NAME.fullmatch(name) and isinstance(ref, dict)
        and isinstance(ref.get("hash"), str) and _HASH.fullmatch(ref["hash"])
        for name, ref in values.items()
    ):  # fmt: skip
        return False
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        return False
    return host is None or isinstance(host, str)


def lookup(store: Any, key: str, values: set[str], metrics: set[str]) -> Hit | None:
    """The entry under ``key`` with every value in ``values`` pulled whole, or None when there is none;
    :class:`Miss` (one line) when there is one that cannot be used."""
    if not _KEY.fullmatch(key):
        return None
    data = store.get(entry_key(key))
    if data is None:
        return None
    try:
        wrapper = json.loads(data)
        body, signature = wrapper["entry"], wrapper.get("sig")
    except (ValueError, KeyError, TypeError):
        raise Miss(f"its entry {entry_key(key)} is unreadable") from None
    if not isinstance(body, dict) or not _verified(_canonical(body), signature):
        raise Miss(f"its entry {entry_key(key)} is not signed with the team key ($NBMAGIC_STORE_KEY)")
    if not _well_formed(body, key):
        raise Miss(f"its entry {entry_key(key)} is malformed")
    missing = sorted((values - set(body["values"])) | (metrics - set(body["metrics"])))
    if missing:
        raise Miss(f"its entry {entry_key(key)} lacks {missing[0]!r}")
    hit = Hit(body["run"], body["step"], str(body.get("host") or "?")[:200], {}, dict(body["metrics"]))
    hit.scratch = Path(tempfile.mkdtemp(prefix="nbmagic-pod-cache-"))
    try:
        for name in sorted(values):
            ref = body["values"][name]
            hit.folders[name] = pull(store, ref["hash"], name, hit.scratch / name)
            hit.refs[name] = {k: ref.get(k) for k in ("hash", "type", "format", "size")}
    except BaseException:
        hit.discard()
        raise
    return hit


def pull(store: Any, digest: str, name: str, folder: Path) -> Path:
    """Download value ``digest`` into ``folder`` and check it: manifest signed with the team key (unless its
    format runs no code), every file against its hash. :class:`Miss` when it is absent or does not check."""
    base = f"objects/{digest[:2]}/{digest}/"
    manifest_bytes = store.get(base + MANIFEST)
    if manifest_bytes is None:
        raise Miss(f"value {name!r} ({digest[:12]}) is no longer in the store")
    try:
        manifest = json.loads(manifest_bytes)
        paths = [entry["path"] for entry in manifest["files"]]
    except (ValueError, KeyError, TypeError):
        raise Miss(f"value {name!r} ({digest[:12]}) has an unusable manifest") from None
    if any(not isinstance(p, str) or not p or "/" in p or "\\" in p or p in (".", "..", MANIFEST) for p in paths):
        raise Miss(f"value {name!r} ({digest[:12]}) has an unusable manifest")
    if manifest.get("format") not in SAFE_FORMATS and not _verified(manifest_bytes, store.get(base + "manifest.sig")):
        raise Miss(
            f"value {name!r} ({manifest.get('format')}) is not signed with the team key, and its format could run code"
        )
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_bytes(manifest_bytes)
    for path in paths:
        if not store.get_file(base + path, folder / path):
            _drop(store, base)
            raise Miss(f"value {name!r} ({digest[:12]}) lacks its file {path}; removed from the store")
    try:  # a value this pod cannot check (no xxhash, a newer algorithm) is a miss; the store keeps it
        hasher(str(manifest.get("hash_algorithm")), name)
    except marshal.MarshalError as exc:
        raise Miss(f"{exc}; left in the store") from None
    try:
        marshal.verify(folder, name, expected_hash=digest)
    except marshal.CorruptValue as exc:
        _drop(store, base)
        raise Miss(f"{exc}; removed from the store") from None
    return folder


def _drop(store: Any, base: str) -> None:
    """A value that does not check loses its manifest (readers then see it absent, as the local pull does), so
    the step that runs now uploads it whole again."""
    try:
        store.delete(base + MANIFEST)
    except Exception:  # noqa: BLE001, S110 - the step runs either way; the next pull finds it corrupt again
        pass


def place(hit: Hit, outputs: dict[str, Any]) -> None:
    """Move the pulled values into the step's output artifacts (their folders and metadata, as a run sets them).
    On a failure the artifacts' folders are emptied again, so none is left half written."""
    try:
        for name, artifact in outputs.items():
            target = Path(artifact.path)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(hit.folders[name]), str(target))  # a rename where both are on one file system
            manifest = json.loads((target / MANIFEST).read_bytes())
            artifact.metadata.update({k: manifest[k] for k in ("type", "format", "size", "hash") if k in manifest})
    except BaseException:
        for artifact in outputs.values():
            shutil.rmtree(artifact.path, ignore_errors=True)
            for k in ("type", "format", "size", "hash"):
                artifact.metadata.pop(k, None)
        raise


def write_entry(
    store: Any,
    key: str,
    run: str,
    step: str,
    refs: dict[str, dict[str, Any]],
    metrics: dict[str, int | float],
    replace: bool = False,
) -> bool:
    """Write the signed entry for ``key`` (only if absent, unless ``replace``); False without a team key."""
    body = {
        "format": FORMAT,
        "key": key,
        "run": run,
        "step": step,
        "host": socket.gethostname()[:200],
        "values": {name: {k: ref.get(k) for k in ("hash", "type", "format", "size")} for name, ref in refs.items()},
        "metrics": dict(metrics),
    }
    signature = _sign(_canonical(body))
    if not signature:
        return False
    store.put(entry_key(key), data=json.dumps({"entry": body, "sig": signature}).encode(), if_absent=not replace)
    return True
