"""A real S3 API on this machine for tests: moto's standalone server on 127.0.0.1, one bucket per test.

The ``s3_store`` fixture (registered in conftest) is a fixture that starts the server (once per test session), makes a fresh
bucket and sets ``$NBMAGIC_STORE_URI``, ``$AWS_ENDPOINT_URL``, test credentials and ``$NBMAGIC_STORE_KEY``, so
every ``RunStore()`` made in the test (and every child process started from it) shares that store.
"""

from __future__ import annotations

import socket
import threading
import uuid
from dataclasses import dataclass

import pytest

_SERVER: dict[str, object] = {}
_LOCK = threading.Lock()


def moto_endpoint() -> str:
    """http://127.0.0.1:PORT of a moto S3 server running in this process (started on first use)."""
    with _LOCK:
        if "endpoint" not in _SERVER:
            from moto.server import ThreadedMotoServer

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            import logging

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            server.start()
            _SERVER["server"], _SERVER["endpoint"] = server, f"http://127.0.0.1:{port}"
        return str(_SERVER["endpoint"])


CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-access-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Store:
    endpoint: str
    bucket: str
    uri: str
    key: str

    def env(self) -> dict[str, str]:
        """What a child process (kernel, runner) needs to reach the same store."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "NBMAGIC_STORE_URI": self.uri,
            "NBMAGIC_STORE_KEY": self.key,
        }

    def client(self):  # noqa: ANN201 - a boto3 S3 client on the same server
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_lower(CREDENTIALS))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", ())]


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
        "region_name": creds["AWS_DEFAULT_REGION"],
    }


def moto_process() -> tuple[str, object]:
    """A moto S3 server in its own process (for benchmarks: no GIL shared with the client); (endpoint, Popen)."""
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return endpoint, proc


def new_store(prefix: str = "team/runs", endpoint: str | None = None) -> S3Store:
    endpoint = endpoint or moto_endpoint()
    bucket = f"nbmagic-{uuid.uuid4().hex[:12]}"
    store = S3Store(endpoint, bucket, f"s3://{bucket}/{prefix}", "team-key-" + uuid.uuid4().hex)
    store.client().create_bucket(Bucket=bucket)
    return store


@pytest.fixture
def s3_store(monkeypatch):
    """A fresh bucket on the local moto server, configured as this test's shared run store."""
    store = new_store()
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return store
