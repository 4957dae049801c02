"""Put a serving package where a KServe storage initializer can fetch it: one uploader per URI scheme.

``file://PATH`` copies (useful when that path is shared with the cluster), ``pvc://CLAIM/PATH`` copies into the
claim's local mount (``NBMAGIC_PVC_MOUNTS="claim=/mount,..."``, e.g. the notebook's workspace volume),
``s3://`` and ``gs://`` use boto3 / google-cloud-storage with their usual credential chains (environment,
instance role, workload identity) — nbmagic never reads, stores or forwards credentials itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from nbmagic.serve.errors import ServeError


class Uploader(Protocol):
    def __call__(self, source: Path, uri: str) -> str:
        """Copy the directory ``source`` to ``uri``; return the URI that now holds it."""


def _copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)


def upload_file(source: Path, uri: str) -> str:
    _copy_tree(source, Path(urlparse(uri).path))
    return uri


def pvc_mounts() -> dict[str, Path]:
    """``NBMAGIC_PVC_MOUNTS="claim=/path,other=/path2"`` -> {claim: path}."""
    mounts = {}
    for item in filter(None, os.environ.get("NBMAGIC_PVC_MOUNTS", "").split(",")):
        claim, _, path = item.partition("=")
        mounts[claim.strip()] = Path(path.strip())
    return mounts


def upload_pvc(source: Path, uri: str) -> str:
    parsed = urlparse(uri)
    mount = pvc_mounts().get(parsed.netloc)
    if mount is None:
        raise ServeError(
            f"--storage-uri {uri}: PVC '{parsed.netloc}' is not mounted here; "
            f"set NBMAGIC_PVC_MOUNTS='{parsed.netloc}=/its/mount/path'"
        )
    _copy_tree(source, mount / parsed.path.lstrip("/"))
    return uri


def upload_s3(source: Path, uri: str) -> str:
    try:
        import boto3
    except ImportError:
        raise ServeError(f"--storage-uri {uri}: uploading to s3:// needs boto3 (pip install boto3)") from None
    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(source).as_posix()}".lstrip("/"))
    return uri


def upload_gs(source: Path, uri: str) -> str:
    try:
        from google.cloud import storage
    except ImportError:
        raise ServeError(f"--storage-uri {uri}: uploading to gs:// needs google-cloud-storage") from None
    parsed = urlparse(uri)
    bucket = storage.Client().bucket(parsed.netloc)
    prefix = parsed.path.strip("/")
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        bucket.blob(f"{prefix}/{path.relative_to(source).as_posix()}".lstrip("/")).upload_from_filename(str(path))
    return uri


UPLOADERS: dict[str, Callable[[Path, str], str]] = {
    "file": upload_file,
    "pvc": upload_pvc,
    "s3": upload_s3,
    "gs": upload_gs,
}


def upload(source: Path, uri: str) -> str:
    """Upload with the uploader registered for ``uri``'s scheme (add your own to ``UPLOADERS``)."""
    scheme = urlparse(uri).scheme
    if scheme not in UPLOADERS:
        raise ServeError(f"--storage-uri {uri}: scheme '{scheme}://' is not supported ({', '.join(UPLOADERS)})")
    return UPLOADERS[scheme](source, uri)
