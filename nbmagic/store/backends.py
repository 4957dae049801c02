"""Blobs by key on a shared store: S3 (boto3, imported on first use) or a folder on a shared disk (Cloud Storage:
``nbmagic.store.gcs``, the same operations).

Both give the same few operations. A blob is visible whole or not at all: S3 makes an object visible only once
its upload (multipart included) completes; the folder backend writes a temp file and renames it into place.
``if_absent`` puts never replace an existing blob (S3 ``If-None-Match: *``; a hard link on disk), so several
writers of one key are safe. Every failure is :class:`RemoteError`, one line naming the store and the cause.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import NbMagicError
from ..store_uri import StoreURI, store_retries


class RemoteError(NbMagicError):
    """The shared store could not be reached or refused an operation."""


@dataclass(frozen=True)
class Blob:
    key: str  # relative to the store's prefix
    size: int
    modified: float  # epoch seconds (the store's clock)


class Backend:
    """The operations the shared store needs; keys are relative to the store URI's prefix."""

    uri: StoreURI

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        """Write ``data``; with ``if_absent`` an existing blob is kept and False returned."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:
        """The blob's bytes, or None when there is no such blob."""
        raise NotImplementedError

    def get_file(self, key: str, path: Path) -> bool:
        """Download into ``path``; False when there is no such blob."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str, start_after: str = "") -> Iterator[Blob]:
        """Blobs whose key starts with ``prefix``, in key order, after ``start_after``."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def now(self) -> float:
        """The store's clock (what it stamps ``Blob.modified`` with), epoch seconds: the time stamped on a
        probe written now (:meth:`_probe_clock`), its offset from this machine's clock kept ``CLOCK_TTL_S``;
        this machine's clock when the store cannot be probed (e.g. read-only credentials)."""
        import time

        local = time.time()
        cached = getattr(self, "_clock", None)
        if cached is not None and 0 <= local - cached[0] < CLOCK_TTL_S:
            return local + cached[1]
        try:
            stamp = self._probe_clock()
        except (RemoteError, OSError):
            stamp = None
        after = time.time()
        if stamp is None:  # kept too: a store that cannot be probed is not probed on every call
            self._clock = (after, 0.0)
            return after
        self._clock = (after, stamp - (local + after) / 2)
        return after + self._clock[1]

    def _probe_clock(self) -> float | None:
        """The store's time stamp of a probe object written (and removed) now; None if it has no clock."""
        return None


def open_backend(uri: StoreURI) -> Backend:
    if uri.scheme == "gs":
        from .gcs import GCSBackend  # Cloud Storage through Google's client, in its own module

        return GCSBackend(uri)
    return FileBackend(uri) if uri.scheme == "file" else S3Backend(uri)


CLOCK_TTL_S = 60.0  # how long the offset between this machine's clock and the store's is trusted

# ----------------------------------------------------------------------------------------- shared folder


class FileBackend(Backend):
    """A folder (NFS, a shared disk). Files and folders are owner-only, plus the group bits of the store's
    folder: ``chmod 2770`` the folder to share it with a group; others never get access."""

    def __init__(self, uri: StoreURI) -> None:
        self.uri = uri
        self.root = Path(uri.prefix)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            group = self.root.stat().st_mode & 0o070
        except OSError as exc:
            raise RemoteError(f"the run store {uri}: cannot create its folder ({exc.strerror or exc})") from None
        self.dir_mode, self.file_mode = 0o700 | group, 0o600 | (group & 0o060)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise RemoteError(f"the run store {self.uri}: bad key {key!r}")
        return self.root / key

    def _tmp(self) -> Path:
        folder = self.root / "tmp"
        if not folder.is_dir():
            folder.mkdir(mode=self.dir_mode, exist_ok=True)
        return folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def _parent(self, path: Path) -> None:
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists() and self.root in p.parents]
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=self.dir_mode)
                os.chmod(folder, self.dir_mode)

    def _place(self, tmp: Path, final: Path, if_absent: bool) -> bool:
        os.chmod(tmp, self.file_mode)
        self._parent(final)
        try:
            if if_absent:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, final)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: Path) -> None:
        import shutil

        final, tmp = self._path(key), self._tmp()
        try:
            shutil.copyfile(path, tmp)
            self._place(tmp, final, False)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RemoteError(f"the run store {self.uri}: cannot write {key}: {exc.strerror or exc}") from None

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        final, tmp = self._path(key), self._tmp()
        try:
            tmp.write_bytes(data)
            return self._place(tmp, final, if_absent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RemoteError(f"the run store {self.uri}: cannot write {key}: {exc.strerror or exc}") from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RemoteError(f"the run store {self.uri}: cannot read {key}: {exc.strerror or exc}") from None

    def get_file(self, key: str, path: Path) -> bool:
        import shutil

        try:
            shutil.copyfile(self._path(key), path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RemoteError(f"the run store {self.uri}: cannot read {key}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str, start_after: str = "") -> Iterator[Blob]:
        folder = prefix.rpartition("/")[0]
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        found: list[Blob] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and key > start_after and not key.startswith("tmp/"):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(os.path.join(dirpath, name))
                        found.append(Blob(key, st.st_size, st.st_mtime))
        yield from sorted(found, key=lambda b: b.key)

    def _probe_clock(self) -> float | None:
        """The file server's clock: the modification time it stamps on a file written now."""
        probe = self._tmp()
        try:
            probe.write_bytes(b"")
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise RemoteError(f"the run store {self.uri}: cannot delete {key}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------------------- S3


def _s3_reason(exc: BaseException) -> str:
    """A short cause for a boto3/botocore failure (never a credential value)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code", "")
        if code in ("NoSuchBucket",):
            return "the bucket does not exist"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access denied ({code}): check the credentials (AWS_ACCESS_KEY_ID / profile / the store secret)"
        return f"{code or 'error'}: {error.get('Message', '')}".strip()
    name = type(exc).__name__
    if name == "NoCredentialsError":
        return "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or the pod's identity"
    text = str(exc).splitlines()[0] if str(exc) else name
    return f"network error ({name}: {text})"


class S3Backend(Backend):
    """An S3 bucket (or MinIO and other S3-compatible servers through ``$AWS_ENDPOINT_URL``)."""

    def __init__(self, uri: StoreURI) -> None:
        self.uri = uri
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise RemoteError(
                f"the run store {uri} needs boto3: pip install 'nbmagic[s3]' (or pip install boto3)"
            ) from None
        config = Config(
            retries={"max_attempts": store_retries(), "mode": "standard"},  # attempts, the first included
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=32,
        )
        self.client = boto3.session.Session().client("s3", config=config)
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=8)

    def _key(self, key: str) -> str:
        return self.uri.key(key)

    def _fail(self, action: str, key: str, exc: BaseException) -> RemoteError:
        return RemoteError(f"the run store {self.uri}: cannot {action} {key}: {_s3_reason(exc)}")

    @staticmethod
    def _missing(exc: BaseException) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.uri.bucket, self._key(key), Config=self.transfer)
        except Exception as exc:  # noqa: BLE001 - botocore's errors have no common base worth naming
            cause = getattr(exc, "last_exception", None) or exc.__cause__ or exc
            raise self._fail("write", key, cause) from None

    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self.client.put_object(Bucket=self.uri.bucket, Key=self._key(key), Body=data, **extra)
            return True
        except Exception as exc:  # noqa: BLE001
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if if_absent and code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._fail("write", key, exc) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.uri.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return None
            raise self._fail("read", key, exc) from None

    def get_file(self, key: str, path: Path) -> bool:
        try:
            self.client.download_file(self.uri.bucket, self._key(key), str(path), Config=self.transfer)
            return True
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return False
            raise self._fail("read", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.uri.bucket, Key=self._key(key))
            return True
        except Exception as exc:  # noqa: BLE001
            if self._missing(exc):
                return False
            raise self._fail("read", key, exc) from None

    def list(self, prefix: str, start_after: str = "") -> Iterator[Blob]:
        base = self._key("")
        args = {"Bucket": self.uri.bucket, "Prefix": self._key(prefix)}
        if start_after:
            args["StartAfter"] = self._key(start_after)
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for item in page.get("Contents", ()):
                    key = item["Key"][len(base) :]
                    yield Blob(key, int(item["Size"]), item["LastModified"].timestamp())
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix or "/", exc) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.uri.bucket, Key=self._key(key))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("delete", key, exc) from None

    def now(self) -> float:
        """The server's clock, from the ``Date`` header of a one-key listing (1 s resolution)."""
        from email.utils import parsedate_to_datetime

        try:
            reply = self.client.list_objects_v2(Bucket=self.uri.bucket, Prefix=self._key("live/"), MaxKeys=1)
            return parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return super().now()
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", "live/", exc) from None
