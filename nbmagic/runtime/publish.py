"""A compiled step records itself in the shared run store: its values, then one signed record for the step.

Runs inside a KFP component, so standard library only (boto3 is imported when the store is on S3, and
google-cloud-storage when it is on Cloud Storage, like a format's library). The layout and record format are the run store's (``nbmagic.store.remote``): values under
``objects/<h[:2]>/<h>/`` with their ``manifest.json`` written last and only if absent, the step as
``runs/<ms>-<run id>-<step>.json``; a kernel importing the records puts the run together from its steps.
While a step runs, :func:`heartbeat` keeps ``live/<run id>.json`` fresh from a background thread (and each
step's record is preceded by one), so kernels show a run whose pod was killed as lost once it falls silent.
Credentials come from the environment (the ``--store-secret`` Kubernetes secret, or the pod's identity; on Cloud
Storage Application Default Credentials: the secret's key file through ``$GOOGLE_APPLICATION_CREDENTIALS``, or
workload identity).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from . import gcs_errors

MANIFEST = "manifest.json"
HEARTBEAT_S = float(os.environ.get("NBMAGIC_STORE_HEARTBEAT", "60"))  # well inside the readers' lease (600 s)
LEASE_RENEW_S = 60.0  # a writer lease is renewed this often while a step publishes (stale after 600 s)


class _Folder:
    """Files and folders owner-only plus the group bits of the store's folder, as the kernel's file store."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        group = self.root.stat().st_mode & 0o070
        self.dir_mode, self.file_mode = 0o700 | group, 0o600 | (group & 0o060)

    def _mkdir(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists() and self.root in p.parents]
        for path in reversed(missing):
            try:
                path.mkdir(mode=self.dir_mode)
                os.chmod(path, self.dir_mode)
            except FileExistsError:
                pass

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def put(self, key: str, source: Path | None = None, data: bytes | None = None, if_absent: bool = False) -> None:
        final = self.root / key
        self._mkdir(final.parent)
        tmp = self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._mkdir(tmp.parent)
        if source is not None:
            shutil.copyfile(source, tmp)
        else:
            tmp.write_bytes(data or b"")
        os.chmod(tmp, self.file_mode)
        try:
            if if_absent:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    pass
            else:
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def now(self) -> float:
        """The file server's clock: the modification time it stamps on a file written now."""
        probe = self.root / "tmp" / f"clock-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            self._mkdir(probe.parent)
            probe.write_bytes(b"")
            return probe.stat().st_mtime
        except OSError:
            return time.time()
        finally:
            probe.unlink(missing_ok=True)

    def get_file(self, key: str, dest: Path) -> bool:
        try:
            shutil.copyfile(self.root / key, dest)
            return True
        except FileNotFoundError:
            return False

    def live(self, prefix: str) -> bool:
        folder = self.root / prefix.rpartition("/")[0]
        stem = prefix.rpartition("/")[2]
        now = self.now()
        if not folder.is_dir():
            return False
        for p in folder.iterdir():
            if p.name.startswith(stem):
                try:
                    if now - p.stat().st_mtime < 600:
                        return True
                except FileNotFoundError:  # a lease deleted while listed
                    continue
        return False

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class _S3:
    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3

        self.client, self.bucket, self.prefix = boto3.client("s3"), bucket, prefix

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:  # noqa: BLE001 - botocore's ClientError, imported lazily
            if str(getattr(exc, "response", {}).get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, source: Path | None = None, data: bytes | None = None, if_absent: bool = False) -> None:
        if source is not None:
            self.client.upload_file(str(source), self.bucket, self._key(key))
            return
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data or b"", **extra)
        except Exception as exc:  # noqa: BLE001
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code"))
            if not (if_absent and code in ("PreconditionFailed", "412", "ConditionalRequestConflict")):
                raise

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if str(getattr(exc, "response", {}).get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def get_file(self, key: str, dest: Path) -> bool:
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
            return True
        except Exception as exc:  # noqa: BLE001
            if str(getattr(exc, "response", {}).get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def live(self, prefix: str) -> bool:
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(prefix))
        now = _date_header(page)  # the server's clock: this machine's may be off
        return any(now - item["LastModified"].timestamp() < 600 for item in page.get("Contents", ()))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def _date_header(reply: dict) -> float:
    """The ``Date`` header of an S3 reply (the server's clock, 1 s resolution); this machine's clock without one."""
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


class StoreFailure(RuntimeError):
    """The store refused or could not be reached: one line, naming the key and the cause (never a URL)."""


class _GCS:
    """A Cloud Storage bucket: Application Default Credentials, ``$STORAGE_EMULATOR_HOST`` for a local server.
    Every failure is one :class:`StoreFailure` line (:mod:`.gcs_errors`); a 404 for an object is asked about the
    bucket once, so a missing bucket is never taken for a missing object."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or None)
        except Exception as exc:  # noqa: BLE001 - google.auth's errors, imported lazily
            raise StoreFailure(f"cannot connect: {gcs_errors.reason(exc)}") from None
        self.bucket, self.prefix, self.retry = client.bucket(bucket), prefix, DEFAULT_RETRY
        self._bucket_seen = False

    def _blob(self, key: str, chunk: int | None = None):  # noqa: ANN202
        return self.bucket.blob(f"{self.prefix}/{key}" if self.prefix else key, chunk_size=chunk)

    def _fail(self, action: str, key: str, exc: BaseException, no_object: bool = False) -> StoreFailure:
        if no_object and gcs_errors.status(exc) == 404:
            return StoreFailure(f"cannot {action} {key}: the bucket does not exist")
        return StoreFailure(f"cannot {action} {key}: {gcs_errors.reason(exc)}")

    def _check_bucket(self, action: str, key: str) -> None:
        """After an object's 404: one line when it is the bucket that is missing (asked once while it exists)."""
        if self._bucket_seen:
            return
        try:
            found = self.bucket.exists(retry=self.retry)
        except Exception as exc:  # noqa: BLE001
            if gcs_errors.status(exc) not in (401, 403):  # without storage.buckets.get the object's 404 stands
                raise self._fail(action, key, exc) from None
            found = True
        if not found:
            raise StoreFailure(f"cannot {action} {key}: the bucket does not exist")
        self._bucket_seen = True

    def exists(self, key: str) -> bool:
        try:
            found = bool(self._blob(key).exists(retry=self.retry))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", key, exc) from None
        if not found:
            self._check_bucket("read", key)
        return found

    def put(self, key: str, source: Path | None = None, data: bytes | None = None, if_absent: bool = False) -> None:
        try:
            if source is not None:  # above 8 MiB a resumable upload, streamed in 32 MiB chunks
                self._blob(key, 32 << 20).upload_from_filename(str(source), retry=self.retry)
                return
            self._blob(key).upload_from_string(
                data or b"", if_generation_match=0 if if_absent else None, retry=self.retry
            )
        except Exception as exc:  # noqa: BLE001
            if not (if_absent and gcs_errors.status(exc) == 412):  # 412: the object is there, kept
                raise self._fail("write", key, exc, no_object=True) from None

    def get(self, key: str) -> bytes | None:
        try:
            return self._blob(key).download_as_bytes(retry=self.retry)
        except Exception as exc:  # noqa: BLE001
            if gcs_errors.status(exc) != 404:
                raise self._fail("read", key, exc) from None
        self._check_bucket("read", key)
        return None

    def now(self) -> float:
        """Cloud Storage's clock: the ``updated`` time of a probe object written now (then removed)."""
        blob = self._blob(f"tmp/clock-{uuid.uuid4().hex}")
        try:
            blob.upload_from_string(b"", retry=self.retry)
            stamp = blob.updated.timestamp() if blob.updated else time.time()
        except Exception:  # noqa: BLE001 - e.g. write-only credentials: this machine's clock then
            return time.time()
        try:
            blob.delete(retry=self.retry)
        except Exception:  # noqa: BLE001, S110 - an empty probe left under tmp/ is harmless
            pass
        return stamp

    def get_file(self, key: str, dest: Path) -> bool:
        try:
            self._blob(key).download_to_filename(str(dest), retry=self.retry)
            return True
        except Exception as exc:  # noqa: BLE001
            if gcs_errors.status(exc) != 404:
                raise self._fail("read", key, exc) from None
        self._check_bucket("read", key)
        return False

    def live(self, prefix: str) -> bool:
        now = self.now()
        try:
            blobs = self.bucket.client.list_blobs(self.bucket, prefix=self._blob(prefix).name, retry=self.retry)
            return any(now - blob.updated.timestamp() < 600 for blob in blobs)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc, no_object=True) from None

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete(retry=self.retry)
            return
        except Exception as exc:  # noqa: BLE001
            if gcs_errors.status(exc) != 404:
                raise self._fail("delete", key, exc) from None
        self._check_bucket("delete", key)


def _backend(uri: str):  # noqa: ANN202
    scheme, _, rest = uri.partition("://")
    if scheme == "file":
        return _Folder(rest)
    bucket, _, prefix = rest.partition("/")
    return (_GCS if scheme in ("gs", "gcs") else _S3)(bucket, prefix.strip("/"))


def _sign(data: bytes) -> str | None:
    key = os.environ.get("NBMAGIC_STORE_KEY", "")
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest() if key else None


def _push(store, folder: Path) -> dict:  # noqa: ANN001
    """Upload one stored value (a marshal folder) unless the store has it; its reference."""
    manifest_bytes = (folder / MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    digest = manifest["hash"]
    base = f"objects/{digest[:2]}/{digest}/"
    signature = _sign(manifest_bytes)
    stored = store.get(base + MANIFEST)
    if stored is None:
        for entry in manifest["files"]:
            store.put(base + entry["path"], source=folder / entry["path"])
        if signature:
            store.put(base + "manifest.sig", data=signature.encode())
        store.put(base + MANIFEST, data=manifest_bytes, if_absent=True)
    elif signature and stored == manifest_bytes:  # uploaded by a writer without this key: sign this very manifest
        old = store.get(base + "manifest.sig")
        if old is None or not hmac.compare_digest(old.decode(errors="replace").strip(), signature):
            store.put(base + "manifest.sig", data=signature.encode())
    return {k: manifest.get(k) for k in ("hash", "type", "format", "size")}


def _beat(store, run_id: str) -> None:  # noqa: ANN001
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    store.put(f"live/{run_id}.json", data=json.dumps(info).encode())


def heartbeat(target: dict) -> Callable[[], None]:
    """Renew run ``target["run"]``'s heartbeat every ``HEARTBEAT_S`` from a daemon thread (the first one too,
    so the step waits for no request); returns the function that stops it (and waits for a beat under way).
    The store's client is made here, in the calling thread (boto3's default session is not thread-safe). A
    failed renewal is tried again at the next beat: the step's record is what must reach the store."""
    stop = threading.Event()
    try:
        store = _backend(target["uri"])
    except Exception:  # noqa: BLE001 - no heartbeat: the step's record still says how far the run got
        return stop.set

    def beat() -> None:
        while True:
            try:
                _beat(store, target["run"])
            except Exception:  # noqa: BLE001, S110 - a missed beat is retried; a long silence shows as lost
                pass
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True, name="nbmagic-heartbeat")
    thread.start()

    def stop_beating() -> None:
        stop.set()
        thread.join(timeout=60)  # a beat under way ends before the step's record is written

    return stop_beating


def _renew_lease(uri: str, lease: str, body: bytes) -> Callable[[], None]:
    """Rewrite the writer lease ``lease`` every ``LEASE_RENEW_S`` from a daemon thread, so a publish of big
    values over a slow link stays seen by a gc however long it takes; returns the function that stops it,
    waiting for a renewal under way (it would write the lease again after its removal). The client is made
    here, in the calling thread."""
    stop = threading.Event()
    store = _backend(uri)

    def renew() -> None:
        while not stop.wait(LEASE_RENEW_S):
            try:
                store.put(lease, data=body)
            except Exception:  # noqa: BLE001, S110 - retried at the next renewal, well inside the 600 s
                pass

    thread = threading.Thread(target=renew, daemon=True, name="nbmagic-writer-lease")
    thread.start()

    def stop_renewing() -> None:
        stop.set()
        thread.join()

    return stop_renewing


def credentials_problem(target: dict) -> str | None:
    """One line when the step was compiled to read the store's key file from its ``--store-secret``
    (``target["key_file"]``, which ``$GOOGLE_APPLICATION_CREDENTIALS`` names) and the secret has none: checked
    before the cell runs, so the step stops before its work rather than after it."""
    key_file = target.get("key_file")
    if not key_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") != key_file or os.path.isfile(key_file):
        return None
    if os.environ.get("STORAGE_EMULATOR_HOST"):  # a local server: the client sends no credentials at all
        return None
    secret = target.get("secret") or "the store secret"
    name = os.path.basename(key_file)
    return (
        f"cannot record the step in {target['uri']}: the secret {secret!r} has no {name}"
        f" (kubectl create secret generic {secret} --from-file={name}=SERVICE-ACCOUNT-KEY.json)"
    )


@contextlib.contextmanager
def writer_lease(store, uri: str) -> Iterator[None]:  # noqa: ANN001
    """Hold a writer lease on the store while the block runs: a gc of the store (which excludes writers while it
    deletes) is waited for, up to 600 s, and none starts until the lease is gone."""
    lease = f"locks/writer-{uuid.uuid4().hex}.json"
    body = json.dumps({"pid": os.getpid(), "since": time.time()}).encode()
    for _attempt in range(600):
        store.put(lease, data=body)
        if not store.live("locks/gc-"):
            break
        store.delete(lease)
        time.sleep(1.0)
    else:
        raise RuntimeError(f"a gc of the store has held it for over 600 s ({uri}/locks/gc-*): nothing published")
    stop_renewing = _renew_lease(uri, lease, body)  # a publish of large values may outlast the lease's 600 s
    try:
        yield
    finally:
        stop_renewing()
        store.delete(lease)


def value_ref(folder: str | Path) -> dict:
    """The reference a run record keeps for a stored value (a marshal folder): hash, type, format, size."""
    manifest = json.loads((Path(folder) / MANIFEST).read_bytes())
    return {k: manifest.get(k) for k in ("hash", "type", "format", "size")}


def publish_step(
    target: dict,
    step: str,
    state: str,
    parameters: dict,
    inputs: dict,
    outputs: dict,
    metrics: dict,
    started: float,
    error: str | None = None,
    *,
    not_kept: dict | None = None,
    stored: dict | None = None,
    reused_from: dict | None = None,
) -> str:
    """Record one finished (or failed) step of run ``target["run"]`` in the store ``target["uri"]``.

    ``inputs``/``outputs`` map variable names to their marshal folders; ``stored`` maps more output names to
    references of values the store already holds. ``reused_from`` (``{"run", "step"}``): the step was taken from
    the store's cache, computed by that step of that run; it is recorded as cached, as the local runner records a
    cache hit. ``not_kept``: outputs not stored, and why (e.g. "holds a secret"). Returns the record's key."""
    store = _backend(target["uri"])
    with writer_lease(store, target["uri"]):
        refs = {
            kind: {name: {**_push(store, Path(folder)), "name": name} for name, folder in values.items()}
            for kind, values in (("inputs", inputs), ("outputs", outputs))
        }
        refs["outputs"].update({name: {**ref, "name": name} for name, ref in (stored or {}).items()})
        ended = time.time()
        properties = {"not_kept": not_kept} if not_kept else {}
        if reused_from:
            properties = {"reused_from": reused_from, "not_kept": {}}
        record = {
            "format": 1,
            "run": {
                "id": target["run"],
                "pipeline": target["pipeline"],
                "status": "running",
                "kind": "kfp",
                "parameters": parameters,
                "metrics": metrics,
                "notebook": target.get("notebook"),
                "experiment": None,
                "started": started,
                "ended": ended,
                "steps": len(target["steps"]),
                "cached": 0,
                "error": error,
                "url": None,
                "dag": target.get("dag"),
                "step_names": list(target["steps"]),
            },
            "experiment": None,
            "executions": [
                {
                    "step": step,
                    "state": state,
                    "cached": 1 if reused_from else 0,
                    "started": started,
                    "ended": ended,
                    "error": error,
                    "traceback": None,
                    "cache_key": None,
                    "code_hash": target.get("code_hashes", {}).get(step),
                    "properties": properties,
                    "environment": None,
                    **refs,
                }
            ],
            "exported": ended,
        }
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()
        key = f"runs/{int(ended * 1000):013d}-{target['run']}-{step}.json"
        try:  # before the record: a reader that sees the record sees a fresh heartbeat
            _beat(store, target["run"])
        except Exception:  # noqa: BLE001, S110 - a heartbeat is best-effort: the step's record is what counts
            pass
        store.put(key, data=json.dumps({"record": record, "sig": _sign(canonical)}).encode())
        return key
