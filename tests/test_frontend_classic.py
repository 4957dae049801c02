"""Classic Notebook 6 / nbclassic tell the kernel nothing about its notebook: nbmagic asks the server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from jupyter_client import BlockingKernelClient
from nbformat.v4 import new_code_cell, new_notebook

from nbmagic.pipeline.notebook import find_through_server

pytestmark = pytest.mark.slow
TOKEN = "classic-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """A real Jupyter server on 127.0.0.1 with its own runtime folder; yields (root, runtime, url)."""
    root, runtime = tmp_path / "root", tmp_path / "runtime"
    (root / "sub").mkdir(parents=True)
    runtime.mkdir()
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    env.pop("JPY_SESSION_NAME", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False", "--ServerApp.allow_root=True"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not list(runtime.glob("jpserver-*.json")):
            assert process.poll() is None and time.time() < deadline, "the Jupyter server did not start"
            time.sleep(0.2)
        yield root, runtime, f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(30)


def _start_session(url: str, path: str) -> str:
    body = json.dumps({"path": path, "name": Path(path).name, "type": "notebook", "kernel": {"name": "python3"}})
    request = urllib.request.Request(url + "api/sessions", body.encode(), method="POST")
    request.add_header("Authorization", f"token {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["kernel"]["id"]


def _run(client: BlockingKernelClient, code: str) -> str:
    texts: list[str] = []

    def hook(message: dict) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            texts.append(content["text"])
        elif message["msg_type"] in ("execute_result", "display_data"):
            texts.append(content["data"].get("text/plain", ""))
        elif message["msg_type"] == "error":
            texts.append(f"{content['ename']}: {content['evalue']}")

    client.execute_interactive(code, output_hook=hook, timeout=300)
    return "".join(texts)


def test_the_server_names_the_notebook_a_kernel_runs(server):
    root, runtime, url = server
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), root / "sub" / "demo.ipynb")
    kernel = _start_session(url, "sub/demo.ipynb")
    assert find_through_server(kernel, str(runtime)) == (root / "sub" / "demo.ipynb").resolve()
    assert find_through_server("no-such-kernel", str(runtime)) is None


def test_a_kernel_without_jpy_session_name_reads_its_steps_from_the_file(server):
    root, runtime, url = server
    cells = ["%load_ext nbmagic", "%%step make\nvalues = [1, 2, 3]", "%%step total\ns = sum(values)", "%pipeline"]
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), root / "sub" / "demo.ipynb")
    kernel = _start_session(url, "sub/demo.ipynb")
    client = BlockingKernelClient()
    client.load_connection_file(str(runtime / f"kernel-{kernel}.json"))
    client.start_channels()
    try:
        for _attempt in range(60):  # the heartbeat may not beat yet while the kernel starts
            try:
                client.wait_for_ready(timeout=60)
                break
            except RuntimeError:
                time.sleep(1)
        # classic Notebook 6 sets no JPY_SESSION_NAME (nbclassic sets it to the folder): the kernel knows nothing
        _run(client, "import os\nos.environ.pop('JPY_SESSION_NAME', None)")
        _run(client, "%load_ext nbmagic")
        out = _run(client, "%pipeline")  # no step ran in this kernel: both come from the file the server names
        assert "make -> total: values" in out, out
    finally:
        client.stop_channels()
