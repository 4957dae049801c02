"""%serve locally: KServe's real model server in a subprocess, requested over HTTP (V1 and V2), split layout,
failures (port in use, model that cannot load, wrong shapes), registry, stop, and no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from IPython.core.error import UsageError

from helpers.processes import running
from helpers.serve_shell import serve_shell
from nbmagic.magics.serve import ServeMagics
from nbmagic.serve import local

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAW = ["AAAAC", "UUUUG", "CCCAA", "GGGUU"]


NOTEBOOK = """
import numpy as np
from sklearn.linear_model import LogisticRegression
tokenizer = {"A": 0, "C": 1, "G": 2, "U": 3}
def counts(seq):
    return [sum(1 for c in seq if tokenizer[c] == k) for k in range(4)]
def process_features(rows):
    return np.array([counts(s) for s in rows], dtype=float)
train = ["AAAAC", "UUUUG", "CCCAA", "GGGUU", "AACAA", "UUGUU", "ACAAA", "GUUUU"]
model = LogisticRegression().fit(process_features(train), [0, 1, 0, 1, 0, 1, 0, 1])
expected = model.predict(process_features(["AAAAC", "UUUUG", "CCCAA", "GGGUU"])).tolist()
"""


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    with serve_shell(tmp_path_factory.mktemp("home"), NOTEBOOK) as ip:
        yield ip


@pytest.fixture(scope="module")
def server(shell):
    srv = shell.run_line_magic("serve", "model --transformer process_features --with tokenizer --name seq")
    yield srv
    srv.stop()


def test_v1_predict_on_raw_rows(server, shell):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.status == "running"
    assert server.predict(RAW) == shell.user_ns["expected"]
    assert server.predict({"instances": RAW}, raw=True) == {"predictions": shell.user_ns["expected"]}


def test_v2_open_inference_protocol(server, shell):
    assert server.predict(RAW, protocol="v2") == shell.user_ns["expected"]
    body = {"inputs": [{"name": "seq", "shape": [4], "datatype": "BYTES", "data": RAW}]}
    response = requests.post(f"{server.url}/v2/models/seq/infer", json=body, timeout=10).json()
    assert response["model_name"] == "seq"
    assert response["outputs"][0]["data"] == shell.user_ns["expected"]
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).json() == {"ready": True}


def test_binds_loopback_only_and_grpc_off(server):
    port = server.port
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    ours = [line.split() for line in listening.splitlines()[1:] if line.split()[1].endswith(f":{port:04X}")]
    assert ours and all(fields[1].startswith("0100007F:") for fields in ours)  # 127.0.0.1 only
    pid = server.processes[0].popen.pid
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    sockets = {i[8:-1] for i in inodes if i.startswith("socket:[")}
    listen_ports = {
        int(f[1].split(":")[1], 16)
        for f in (l.split() for l in listening.splitlines() if l.strip())
        if len(f) > 9 and f[3] == "0A" and f[9] in sockets
    }
    assert listen_ports == {port}  # no gRPC listener


def _listening(port: int) -> set[str]:
    """Addresses (hex, as in /proc/net/tcp*) with a listening socket on ``port``."""
    text = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    fields = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("sl")]
    return {f[1].split(":")[0] for f in fields if f[3] == "0A" and int(f[1].split(":")[1], 16) == port}


def test_bad_requests_carry_the_server_message(server):
    with pytest.raises(local.ServeError, match=r"answered 400: transformer 'process_features' failed: KeyError: 'X'"):
        server.predict(["AXA"])
    with pytest.raises(local.ServeError, match=r"answered 400: .*\"instances\": a list"):
        server.predict({"instances": "AAA"})


def test_logs_html_and_list(server, shell):
    assert "Uvicorn running on http://127.0.0.1" in server.logs(200)
    page = server._repr_html_()
    for text in ("seq", server.url, "LogisticRegression", "process_features", "v1", "running"):
        assert text in page
    listed = shell.run_line_magic("serve", "--list")
    assert "seq" in listed.servers and "seq" in listed._repr_html_()


def test_split_layout_transformer_forwards_to_predictor(shell):
    srv = shell.run_line_magic(
        "serve", "model --transformer process_features --with tokenizer --name seq-split --split --protocol v2 --grpc"
    )
    try:
        assert [p.role for p in srv.processes] == ["predictor", "transformer"]
        addresses = _listening(srv.grpc_port)  # gRPC when asked, on 127.0.0.1 only (maybe as ::ffff:127.0.0.1)
        assert addresses and addresses <= {"0100007F", "0000000000000000FFFF00000100007F"}
        assert srv.predict(RAW) == shell.user_ns["expected"]  # V2 client -> transformer -> V2 predictor
        assert srv.predict(RAW, protocol="v1") == shell.user_ns["expected"]
        assert srv.predictor_url != srv.url
        bad = requests.post(
            f"{srv.predictor_url}/v1/models/seq-split:predict", json={"instances": [[1.0, 2.0]]}, timeout=10
        )
        assert bad.status_code == 400
        assert "X has 2 features, but LogisticRegression is expecting 4 features" in bad.json()["error"]
        assert "split: transformer -&gt; predictor" in srv._repr_html_()
    finally:
        srv.stop()
    assert srv.status == "stopped" and all(p.popen.poll() is not None for p in srv.processes)
    assert "seq-split" not in local.live()


def test_stop_by_name_releases_the_port(shell):
    first = shell.run_line_magic("serve", "model --name seq-stop")
    # serving again under the same name (and port) replaces the old server
    srv = shell.run_line_magic("serve", f"model --name seq-stop --port {first.port}")
    assert first.status == "stopped" and srv.port == first.port
    assert srv.predict([[5, 0, 0, 0]]) in ([0], [1])
    shell.run_line_magic("serve", "--stop seq-stop")
    assert srv.status == "stopped"
    local.check_port(srv.port)  # free again
    with pytest.raises(UsageError, match="no live server named 'seq-stop'"):
        shell.run_line_magic("serve", "--stop seq-stop")


def test_port_in_use_is_a_clear_error(shell):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} is already in use on 127.0.0.1"):
            shell.run_line_magic("serve", f"model --name seq-port --port {port}")


def test_bad_magic_input(shell):
    with pytest.raises(UsageError, match="model 'nothing_here' is not defined"):
        shell.run_line_magic("serve", "nothing_here")
    with pytest.raises(UsageError, match=r"'tokenizer' \(dict\) is not a model"):
        shell.run_line_magic("serve", "tokenizer")
    with pytest.raises(UsageError, match=r"uses 'tokenizer' \(dict\).*add --with tokenizer"):
        shell.run_line_magic("serve", "model --transformer process_features")
    assert "--transformer FN" in ServeMagics.serve.__doc__ and "--split" in ServeMagics.serve.__doc__


def test_model_that_fails_to_load_shows_the_log_tail(shell, tmp_path):
    (tmp_path / "kernel_only_lib.py").write_text("class Model:\n    def predict(self, x):\n        return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        shell.run_cell("import kernel_only_lib\nbroken = kernel_only_lib.Model()").raise_error()
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("serve", "broken --name broken")
    finally:
        sys.path.remove(str(tmp_path))
    message = str(info.value)
    assert message.startswith("server for 'broken' exited with code 1 before it was ready; last lines of")
    assert "ModuleNotFoundError: No module named 'kernel_only_lib'" in message


def test_server_dies_with_its_kernel(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from sklearn.dummy import DummyClassifier
        from nbmagic.serve.api import serve
        srv = serve(DummyClassifier().fit([[0], [1]], [0, 1]), name="orphan")
        print(srv.processes[0].popen.pid, flush=True)
        time.sleep(120)
    """)
    env = dict(os.environ, NBMAGIC_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    kernel = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pid = int(kernel.stdout.readline())
        assert running(pid)
    finally:
        kernel.send_signal(signal.SIGKILL)  # no atexit: only the child's own safeguards can stop it
        kernel.wait()
    deadline = time.monotonic() + 10
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(pid)


def test_requests_leave_the_log_quiet_and_logs_follow(server, capsys):
    before = server.logs(1000).splitlines()
    for _ in range(5):
        server.predict(RAW)
    assert server.logs(1000).splitlines() == before  # no per-request lines (access log, latency, warnings)
    capsys.readouterr()
    server.logs(5, follow=0.3)
    assert server.logs(5) in capsys.readouterr().out
