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

from ..runtime import gcs_errors
from ..store_uri import StoreURI, store_retries
from .backends import Backend, Blob, RemoteError

CHUNK = 32 << 20  # values above 8 MiB go up as resumable uploads, streamed from the file in chunks of this size
TIMEOUT = (10.0, 120.0)  # connect, read (seconds) of each request
PAGE_SIZE = 1000  # keys per listing request (the JSON API's maximum)


def _reason(exc: BaseException, no_object: bool = False) -> str:
    """A short cause for a google-cloud-storage failure (no URL, no credential value). ``no_object``: a 404
    cannot be about an object (a listing, an upload), so it is the bucket that is missing."""
    if gcs_errors.status(exc) == 404 and (no_object or _bucket_missing(exc)):
        return "the bucket does not exist"
    return gcs_errors.reason(exc)


def _bucket_missing(exc: BaseException) -> bool:
    """Cloud Storage's own words for a read in a bucket that does not exist (a missing object is "No such
    object"); a server that says only "Not Found" for both is asked about the bucket (:meth:`GCSBackend._gone`)."""
    error = gcs_errors.http_error(exc)
    return error is not None and "bucket does not exist" in gcs_errors.server_message(error).lower()


class GCSBackend(Backend):
    """A Cloud Storage bucket (or a local server speaking its JSON API through ``$STORAGE_EMULATOR_HOST``)."""

    def __init__(self, uri: StoreURI) -> None:
        self.uri = uri
        try:
            from google.cloud import storage
            from google.cloud.storage import retry as storage_retry
        except ImportError:
            raise RemoteError(
                f"the run store {uri} needs google-cloud-storage: pip install 'nbmagic[gcs]'"
                " (or pip install google-cloud-storage)"
            ) from None
        self._storage = storage
        self.attempts = store_retries()  # tries of each operation, as for S3
        base = storage_retry.DEFAULT_RETRY
        self._transient = getattr(storage_retry, "_should_retry", None) or base._predicate
        # backoff from 0.25 s, doubling up to 8 s; the attempts bound it (the timeout is only a backstop)
        delayed = base.with_delay(initial=0.25, maximum=8.0, multiplier=2.0)
        limit = getattr(delayed, "with_timeout", None) or delayed.with_deadline  # an older api-core: deadline
        self._base_retry = limit(600.0)
        self._client: Any = None
        self._bucket: Any = None
        self._bucket_seen = False  # the bucket was found once: a 404 since is about an object

    @property
    def retry(self) -> Any:
        """A retry policy for one operation: at most ``attempts`` tries of it, transient failures only."""
        left = [self.attempts - 1]

        def again(exc: BaseException) -> bool:
            if left[0] <= 0 or not self._transient(exc):
                return False
            left[0] -= 1
            return True

        return self._base_retry.with_predicate(again)

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

    def _no_bucket(self, action: str, key: str) -> RemoteError:
        return RemoteError(f"the run store {self.uri}: cannot {action} {key}: the bucket does not exist")

    def _bucket_exists(self, action: str, key: str) -> bool:
        """Whether the bucket exists, asked once per backend (until it is found, a 404 may be about it)."""
        if self._bucket_seen:
            return True
        try:
            self._bucket_seen = bool(self.bucket.exists(retry=self.retry, timeout=TIMEOUT))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if gcs_errors.status(exc) not in (401, 403):
                raise self._fail(action, key, exc) from None
            # rights on objects without storage.buckets.get: the bucket cannot be asked about; the object's
            # 404 is taken at its word
            self._bucket_seen = True
        return self._bucket_seen

    def _missing(self, action: str, key: str, exc: BaseException) -> bool:
        """True for a 404 about the object; a 404 because the bucket does not exist raises its own line."""
        if gcs_errors.status(exc) != 404:
            return False
        if _bucket_missing(exc) or not self._bucket_exists(action, key):
            raise self._no_bucket(action, key)
        return True

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
            if if_absent and gcs_errors.status(exc) == 412:  # PreconditionFailed: the object is there
                return False
            raise self._fail("write", key, exc) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._blob(key).download_as_bytes(retry=self.retry, timeout=TIMEOUT)
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self._missing("read", key, exc):
                return None
            raise self._fail("read", key, exc) from None

    def get_file(self, key: str, path: Path) -> bool:
        try:
            self._blob(key).download_to_filename(str(path), retry=self.retry, timeout=TIMEOUT)
            return True
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            if self._missing("read", key, exc):
                return False
            raise self._fail("read", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            found = bool(self._blob(key).exists(retry=self.retry, timeout=TIMEOUT))
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", key, exc) from None
        if not found and not self._bucket_exists("read", key):
            raise self._no_bucket("read", key)
        return found

    def list(self, prefix: str, start_after: str = "") -> Iterator[Blob]:
        base = self.uri.key("")
        after = self.uri.key(start_after) if start_after else ""
        try:
            bucket = self.bucket
            pages = bucket.client.list_blobs(
                bucket,
                prefix=self.uri.key(prefix),
                start_offset=after or None,  # inclusive: the key itself is skipped below
                page_size=PAGE_SIZE,
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
            if self._missing("delete", key, exc):
                return  # already gone, as S3's DeleteObject
            raise self._fail("delete", key, exc) from None
