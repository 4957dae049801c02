"""Blobs by key in a Cloud Storage bucket, through Google's own client (``google-cloud-storage``, imported on first
use), behind the same operations as the S3 and folder backends (:class:`nbmagic.store.backends.Backend`).

Credentials come from Application Default Credentials (``$GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, the pod's workload identity); ``$STORAGE_EMULATOR_HOST`` points the client at a
local server. An object is visible only once its upload completes (a resumable upload that is cut leaves no
object), ``if_absent`` puts are ``ifGenerationMatch=0`` (the server refuses to replace an existing object), and
every failure is one :class:`RemoteError` line naming the store and the cause.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..store_uri import StoreURI
from .backends import Backend, Blob, RemoteError

CHUNK = 32 << 20  # values above 8 MiB go up as resumable uploads, streamed from the file in chunks of this size
TIMEOUT = (10.0, 120.0)  # connect, read (seconds) of each request
CREDENTIALS_HINT = (
    "GOOGLE_APPLICATION_CREDENTIALS / gcloud auth application-default login / the pod's workload identity"
)


def _reason(exc: BaseException, no_object: bool = False) -> str:
    """A short cause for a google-cloud-storage failure (never a credential value). ``no_object``: a 404 cannot be
    about an object (a listing, an upload), so it is the bucket that is missing."""
    name = type(exc).__name__
    cause = getattr(exc, "cause", None)  # api_core's RetryError wraps the last failure
    if name == "RetryError" and isinstance(cause, BaseException):
        return _reason(cause, no_object)
    if name == "DefaultCredentialsError":
        return f"no credentials: set up Application Default Credentials ({CREDENTIALS_HINT})"
    if name in ("RefreshError", "TransportError") and "google.auth" in type(exc).__module__:
        return f"the credentials could not be used ({name}): check {CREDENTIALS_HINT}"
    code = getattr(exc, "code", None)
    if isinstance(code, int) and hasattr(exc, "message"):  # google.api_core.exceptions.GoogleAPICallError
        message = str(getattr(exc, "message", "") or "").splitlines()[0] if getattr(exc, "message", "") else ""
        if code == 404 and (no_object or _bucket_missing(exc)):
            return "the bucket does not exist"
        if code in (401, 403):
            return f"access denied ({code}): check the credentials ({CREDENTIALS_HINT}, or the store secret)"
        return f"{code} {name}: {message}"[:300].strip()
    text = str(exc).splitlines()[0] if str(exc) else name
    return f"network error ({name}: {text[:200]})"


def _bucket_missing(exc: BaseException) -> bool:
    """Cloud Storage's own words for a read in a bucket that does not exist (a missing object is "No such
    object"); a server that says only "Not Found" for both is taken at its word for the object."""
    return "bucket does not exist" in str(getattr(exc, "message", "") or exc).lower()


class GCSBackend(Backend):
    """A Cloud Storage bucket (or a local server speaking its JSON API through ``$STORAGE_EMULATOR_HOST``)."""

    def __init__(self, uri: StoreURI) -> None:
        self.uri = uri
        try:
            from google.api_core import exceptions
            from google.cloud import storage
            from google.cloud.storage.retry import DEFAULT_RETRY
        except ImportError:
            raise RemoteError(
                f"the run store {uri} needs google-cloud-storage: pip install 'nbmagic[gcs]'"
                " (or pip install google-cloud-storage)"
            ) from None
        self._storage, self._exceptions = storage, exceptions
        attempts = max(1, int(os.environ.get("NBMAGIC_STORE_RETRIES", "3")))
        # retried with backoff from 0.25 s, doubling, for up to 2**attempts seconds in all (3 -> 8 s)
        retry = DEFAULT_RETRY.with_delay(initial=0.25, maximum=8.0, multiplier=2.0)
        limit = (
            getattr(retry, "with_timeout", None) or retry.with_deadline
        )  # an older google-api-core names it deadline
        self.retry = limit(float(2**attempts))
        self._client: Any = None
        self._bucket: Any = None

    @property
    def bucket(self) -> Any:
        """The bucket handle; the client (and its credentials) are made on first use, so a missing credential
        is one line where the store is used, as with S3."""
        if self._bucket is None:
            try:
                project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None  # the store needs none: bucket calls only
                self._client = self._storage.Client(project=project)
            except Exception as exc:  # noqa: BLE001 - google.auth's errors, imported lazily
                raise RemoteError(f"the run store {self.uri}: cannot connect: {_reason(exc)}") from None
            self._bucket = self._client.bucket(self.uri.bucket)
        return self._bucket

    def _blob(self, key: str, chunk: int | None = None) -> Any:
        return self.bucket.blob(self.uri.key(key), chunk_size=chunk)

    def _fail(self, action: str, key: str, exc: BaseException) -> RemoteError:
        return RemoteError(
            f"the run store {self.uri}: cannot {action} {key}: {_reason(exc, action in ('write', 'list'))}"
        )

    def _missing(self, exc: BaseException) -> bool:
        return isinstance(exc, self._exceptions.NotFound) and not _bucket_missing(exc)

    def put_file(self, key: str, path: Path) -> None:
        blob = self._blob(key, CHUNK)
        try:
            blob.upload_from_filename(str(path), retry=self.retry, timeout=TIMEOUT)
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - api_core, requests and resumable-media errors
            raise self._fail("write", key, exc) from None

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        blob = self._blob(key)
        try:
            # with ifGenerationMatch=0 the server writes only if there is no live object of that name
            blob.upload_from_string(
                data, if_generation_match=0 if if_absent else None, retry=self.retry, timeout=TIMEOUT
            )
            return True
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if if_absent and isinstance(exc, self._exceptions.PreconditionFailed):
                return False
            raise self._fail("write", key, exc) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._blob(key).download_as_bytes(retry=self.retry, timeout=TIMEOUT)
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            raise self._fail("read", key, exc) from None

    def get_file(self, key: str, path: Path) -> bool:
        try:
            self._blob(key).download_to_filename(str(path), retry=self.retry, timeout=TIMEOUT)
            return True
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return False
            raise self._fail("read", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            return bool(self._blob(key).exists(retry=self.retry, timeout=TIMEOUT))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", key, exc) from None

    def list(self, prefix: str, start_after: str = "") -> Iterator[Blob]:
        base = self.uri.key("")
        after = self.uri.key(start_after) if start_after else ""
        try:
            bucket = self.bucket
            pages = bucket.client.list_blobs(
                bucket,
                prefix=self.uri.key(prefix),
                start_offset=after or None,  # inclusive: the key itself is skipped below
                retry=self.retry,
                timeout=TIMEOUT,
            )
            for item in pages:
                if item.name == after:
                    continue
                yield Blob(item.name[len(base) :], int(item.size or 0), item.updated.timestamp())
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix or "/", exc) from None

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete(retry=self.retry, timeout=TIMEOUT)
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return  # already gone, as S3's DeleteObject
            raise self._fail("delete", key, exc) from None
