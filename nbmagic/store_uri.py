"""Where the shared run store lives: ``s3://bucket/prefix``, ``gs://bucket/prefix`` or ``file:///shared/path``,
checked in one place.

The store URI comes from ``$NBMAGIC_STORE_URI`` (``%pipeline_config --store URI`` sets it in the kernel);
without one the store is local only (``$NBMAGIC_HOME/store``). Credentials never appear in a URI: S3 uses the
standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, the pod's workload identity) and
``AWS_ENDPOINT_URL`` for S3-compatible servers such as MinIO; Cloud Storage uses Application Default Credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, workload identity) and
``STORAGE_EMULATOR_HOST`` for a local server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import NbMagicError

ENV = "NBMAGIC_STORE_URI"
KEY_ENV = "NBMAGIC_STORE_KEY"  # the team's shared signing key (a secret; never written anywhere)
RETRIES_ENV = "NBMAGIC_STORE_RETRIES"  # attempts of each request to an S3 or Cloud Storage store
DEFAULT_RETRIES = 3
MAX_RETRIES = 20
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Cloud Storage: 3-63 characters (up to 222 with dots, 63 between them), no "goog" prefix, no "google"
_GS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


class StoreURIError(NbMagicError):
    """A store URI that cannot be used (one line naming it and the accepted forms)."""


@dataclass(frozen=True)
class StoreURI:
    """A parsed store URI: ``scheme`` is ``s3``, ``gs`` or ``file``; ``bucket`` is empty for ``file``."""

    scheme: str
    bucket: str
    prefix: str  # key prefix without slashes at either end ('' for the bucket's root); the folder for file://

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def key(self, *parts: str) -> str:
        """The object key (or relative path) of ``parts`` under the store's prefix."""
        inner = "/".join(parts)
        return f"{self.prefix}/{inner}" if self.prefix and self.scheme != "file" else inner


FORMS = "s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"


def parse(text: str, option: str = "--store") -> StoreURI:
    """``s3://bucket/team/runs`` -> StoreURI; one clear line for anything else."""
    value = (text or "").strip()
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise StoreURIError(f"{option} {value!r}: not a store URI; use {FORMS}")
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/") or "\0" in rest or any(part == ".." for part in rest.split("/")):
            raise StoreURIError(f"{option} {value!r}: a file:// store needs an absolute path without '..' ({FORMS})")
        return StoreURI("file", "", "/" + rest.strip("/"))
    if scheme not in ("s3", "s3a", "gs", "gcs"):
        raise StoreURIError(f"{option} {value!r}: unknown scheme {scheme!r}; use {FORMS}")
    gs = scheme in ("gs", "gcs")
    if "@" in rest or "?" in rest or "#" in rest:
        chain = "Application Default Credentials" if gs else "the AWS credential chain"
        raise StoreURIError(f"{option} {value!r}: credentials and options do not go in the URI (use {chain})")
    bucket, _, prefix = rest.partition("/")
    if _IPV4.match(bucket):
        raise StoreURIError(f"{option} {value!r}: {bucket!r} is an IP address, not a bucket name")
    if gs:
        if not _gs_bucket(bucket):
            raise StoreURIError(
                f"{option} {value!r}: {bucket!r} is not a Cloud Storage bucket name"
                " (3-63 of a-z 0-9 . _ -, starting and ending with a letter or digit; no 'goog' prefix)"
            )
    elif not _BUCKET.match(bucket) or ".." in bucket:
        raise StoreURIError(f"{option} {value!r}: {bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    prefix = prefix.strip("/")
    for segment in prefix.split("/") if prefix else ():
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            raise StoreURIError(
                f"{option} {value!r}: prefix part {segment!r} may only hold letters, digits and . _ = + -"
            )
    return StoreURI("gs" if gs else "s3", bucket, prefix)


def _gs_bucket(name: str) -> bool:
    if not _GS_BUCKET.match(name) or ".." in name or name.startswith("goog") or "google" in name:
        return False
    parts = name.split(".")
    return all(0 < len(p) <= 63 for p in parts) and (len(parts) > 1 or len(name) <= 63)


def configured() -> StoreURI | None:
    """The shared store from ``$NBMAGIC_STORE_URI``, or None (local only)."""
    value = os.environ.get(ENV, "").strip()
    if not value or value.lower() in ("local", "none"):
        return None
    return parse(value, f"${ENV}")


def shared_key() -> bytes | None:
    """The team's signing key from ``$NBMAGIC_STORE_KEY`` (any text of 16+ characters), or None."""
    value = os.environ.get(KEY_ENV, "")
    if not value:
        return None
    if len(value) < 16:
        raise StoreURIError(
            f"${KEY_ENV} is too short to sign with: give at least 16 characters (e.g. 32 random bytes, hex)"
        )
    return value.encode()


def store_retries() -> int:
    """How many times each request to an S3 or Cloud Storage store is tried (``$NBMAGIC_STORE_RETRIES``,
    default 3; 1 means no retry), or one line naming the variable."""
    value = os.environ.get(RETRIES_ENV, "").strip()
    if not value:
        return DEFAULT_RETRIES
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_RETRIES:
        raise StoreURIError(
            f"${RETRIES_ENV} {value!r}: give the number of attempts of each store request, 1 to {MAX_RETRIES}"
        )
    return int(value)
