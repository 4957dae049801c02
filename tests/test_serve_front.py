"""The lean routes in front of KServe's app: which requests they answer, which they pass on, and how a failure
inside them is answered."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import requests

from helpers.serve_shell import serve_shell
from nbmagic.serve.routes import Front, _match

NOTEBOOK = """
class Double:
    def predict(self, x):
        return x * 2

double = Double()
"""


@pytest.mark.parametrize(
    ("method", "path", "handler", "model"),
    [
        ("POST", "/v1/models/m:predict", "v1_predict", "m"),
        ("POST", "/v1/models/a:b:predict", "v1_predict", "a:b"),
        ("POST", "/v2/models/m/infer", "v2_infer", "m"),
        ("POST", "/v2/models/m/versions/3/infer", "v2_infer", "m"),
        ("GET", "/v2/models/m", "v2_metadata", "m"),
        ("HEAD", "/v2/models/m", "v2_metadata", "m"),
        ("GET", "/v2/models/m/versions/3", "v2_metadata", "m"),
        ("POST", "/v2/models/m/versions/3", None, None),
        ("GET", "/v2/models/m/versions/", None, None),
        ("GET", "/v1/models/m:predict", None, None),  # another method: KServe's app answers
        ("POST", "/v2/models/m", None, None),
        ("GET", "/v2/models/m/ready", None, None),
        ("GET", "/v1/models/m", None, None),
        ("POST", "/v1/models/:predict", None, None),
        ("POST", "/v2/models//infer", None, None),
        ("POST", "/v2/models/m/versions//infer", None, None),
        ("POST", "/v3/models/m/infer", None, None),
        ("GET", "/v2/health/ready", None, None),
    ],
)
def test_which_paths_the_front_answers(method, path, handler, model):
    found = _match({"type": "http", "method": method, "path": path})
    assert (found[0].__name__, found[1]) == (handler, model) if handler else found is None


class _Failing:
    name = "m"
    version = "1"
    outputs_meta = [{"name": "output-0"}]

    def preprocess(self, data):
        return data

    def predict(self, features, requested=None):
        raise RuntimeError("disk on fire")


def _call(app, method, path, body=b""):
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_failure_inside_the_front_is_a_500_with_the_protocol_error_body():
    passed = []

    async def kserve_app(scope, receive, send):
        passed.append(scope["path"])

    front = Front(kserve_app, _Failing())
    sent = _call(front, "POST", "/v1/models/m:predict", b'{"instances": [[1]]}')
    assert sent[0]["status"] == 500
    assert orjson.loads(sent[1]["body"]) == {"error": "RuntimeError : disk on fire"}
    assert _call(front, "GET", "/v2/health/live") == [] and passed == ["/v2/health/live"]
    missing = _call(front, "POST", "/v2/models/other/infer", b"{}")
    assert missing[0]["status"] == 404
    assert orjson.loads(missing[1]["body"]) == {"error": "Model with name other does not exist."}


@pytest.mark.slow
def test_kserve_routes_still_answer_behind_the_front(tmp_path):
    with serve_shell(tmp_path, NOTEBOOK) as ip:
        server = ip.run_line_magic("serve", "double --name front")
        base = server.url
        assert requests.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
        assert requests.get(f"{base}/v2/models/front/ready", timeout=10).status_code == 200
        assert requests.get(f"{base}/v2/models/front/versions/1/ready", timeout=10).json()["ready"] is True
        assert requests.get(f"{base}/v2/models/front/versions/2/ready", timeout=10).status_code == 404
        assert requests.get(f"{base}/v2/models/front/versions/1", timeout=10).json()["versions"] == ["1"]
        head = requests.head(f"{base}/v2/models/front", timeout=10)
        assert (head.status_code, head.content) == (200, b"")
        assert requests.get(f"{base}/v1/models/front", timeout=10).json() == {"name": "front", "ready": True}
        wrong_method = requests.get(f"{base}/v1/models/front:predict", timeout=10)  # KServe's GET /v1/models/{name}
        assert wrong_method.status_code == 404 and "front:predict" in wrong_method.json()["error"]
        answer = requests.post(
            f"{base}/v2/models/front/versions/1/infer",
            json={"id": "x", "inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]},
            timeout=10,
        ).json()
        assert (answer["id"], answer["outputs"][0]["data"], answer["outputs"][0]["datatype"]) == ("x", [2, 4], "INT32")
        assert requests.post(f"{base}/v1/models/front:predict", json={"instances": [3]}, timeout=10).json() == {
            "predictions": [6]
        }
        bad = requests.post(f"{base}/v1/models/front:predict", data=b"{", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"].startswith("request body is not JSON")
        _assert_framework_errors_use_the_protocol_body(base)


def _assert_framework_errors_use_the_protocol_body(base):
    unknown = requests.get(f"{base}/v2/nowhere", timeout=10)
    assert (unknown.status_code, unknown.json()) == (404, {"error": "Not Found"})
    method = requests.delete(f"{base}/v2/health/ready", timeout=10)
    assert (method.status_code, method.json()) == (405, {"error": "Method Not Allowed"})
    assert "GET" in method.headers["allow"]


@pytest.mark.slow
def test_logged_requests_time_the_front_too(tmp_path):
    """With --log-requests, KServe's timing middleware goes around the front: inference requests are timed too."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from nbmagic.serve import local
    from nbmagic.serve.package import build

    class Double:
        def predict(self, x):
            return [v * 2 for v in x]

    package = build(Double(), tmp_path / "package", name="logged")
    port = local.free_port()
    log = tmp_path / "server.log"
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    argv = ["--package", str(package.path), "--name", "logged", "--http-port", str(port), "--log-requests"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nbmagic.serve.server", *argv], stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 120
        while not local._answers("127.0.0.1", port, "/v1/models/logged"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/logged:predict", json={"instances": [2]}, timeout=10)
        assert answer.json() == {"predictions": [4]}
        _assert_framework_errors_use_the_protocol_body(f"http://127.0.0.1:{port}")  # a server built without fork
        deadline = time.monotonic() + 10
        while "kserve.io.v1.models.logged:predict" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "kserve.io.v1.models.logged:predict" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


class _Echo:
    """Answers V1 predict with the rows it received (to check the body was assembled whole)."""

    name = "m"
    version = "1"
    outputs = {"output-0": None}
    outputs_meta = [{"name": "output-0"}]

    def preprocess(self, data):
        return data

    def predict(self, features, requested=None):
        return {"output-0": features}

    def observe(self, inputs, outputs):
        pass

    def metadata(self):
        return {"name": self.name, "versions": [self.version], "inputs": [], "outputs": []}


class _Chunk(bytes):
    """A body chunk that counts how often it is added to another bytes object (a copy of the body so far)."""

    added = 0

    def __radd__(self, other):
        _Chunk.added += 1
        return bytes(other) + bytes(self)


def test_a_body_in_many_chunks_is_assembled_once():
    rows = list(range(2000))
    body = orjson.dumps({"instances": rows})
    pieces = [_Chunk(body[i : i + 7]) for i in range(0, len(body), 7)]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    async def kserve_app(scope, receive, send):
        raise AssertionError("the front answers V1 predict")

    _Chunk.added = 0
    scope = {"type": "http", "method": "POST", "path": "/v1/models/m:predict", "headers": [], "query_string": b""}
    asyncio.run(Front(kserve_app, _Echo())(scope, receive, send))
    assert sent[0]["status"] == 200
    assert orjson.loads(sent[1]["body"]) == {"predictions": rows}
    assert _Chunk.added == 0  # joined once, not one growing copy per chunk


def test_a_version_other_than_the_served_one_is_a_404():
    passed = []

    async def kserve_app(scope, receive, send):
        passed.append((scope["method"], scope["path"]))

    front = Front(kserve_app, _Echo())
    tensor = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    wrong = _call(front, "POST", "/v2/models/m/versions/999/infer", orjson.dumps(tensor))
    assert wrong[0]["status"] == 404
    assert orjson.loads(wrong[1]["body"]) == {"error": "Model m has no version 999 (versions: 1)."}
    right = _call(front, "POST", "/v2/models/m/versions/1/infer", orjson.dumps(tensor))
    assert right[0]["status"] == 200 and orjson.loads(right[1]["body"])["outputs"][0]["data"] == [1, 2]
    meta = _call(front, "GET", "/v2/models/m/versions/1")
    assert meta[0]["status"] == 200 and orjson.loads(meta[1]["body"])["versions"] == ["1"]
    assert _call(front, "GET", "/v2/models/m/versions/2")[0]["status"] == 404
    assert _call(front, "GET", "/v2/models/m/versions/2/ready")[0]["status"] == 404
    assert _call(front, "GET", "/v2/models/m/versions/1/ready") == []
    assert passed == [("GET", "/v2/models/m/ready")]  # the served version's readiness: KServe's answer


def test_head_on_metadata_answers_its_headers_without_a_body():
    async def kserve_app(scope, receive, send):
        raise AssertionError("the front answers metadata")

    front = Front(kserve_app, _Echo())
    for path in ("/v2/models/m", "/v2/models/m/versions/1"):
        get = _call(front, "GET", path)
        head = _call(front, "HEAD", path)
        assert head[0] == get[0] and head[0]["status"] == 200
        assert head[1]["body"] == b"" and get[1]["body"]


def _split_front(answer):
    """A transformer-side front whose predictor hop goes through httpx to ``answer(request)``."""
    import httpx

    from nbmagic.serve.routes import Forward

    async def kserve_app(scope, receive, send):
        raise AssertionError("the front answers inference")

    forward = Forward("predictor:80", "v2", "m")
    forward._client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return Front(kserve_app, _Echo(), forward)


@pytest.mark.parametrize(("predictor", "expected"), [(500, 502), (503, 502), (404, 502), (400, 400)])
def test_split_layout_passes_a_predictor_failure_on_as_a_gateway_error(predictor, expected):
    import httpx

    front = _split_front(lambda request: httpx.Response(predictor, json={"error": "boom"}))
    tensor = {"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}
    for protocol, path, body in (
        ("v2", "/v2/models/m/infer", orjson.dumps(tensor)),
        ("v1", "/v1/models/m:predict", b'{"instances": [[1]]}'),
    ):
        front.forward.protocol = protocol
        sent = _call(front, "POST", path, body)
        assert sent[0]["status"] == expected
        assert orjson.loads(sent[1]["body"]) == {"error": f"predictor answered {predictor}: boom"}


def test_split_layout_answers_502_when_the_predictor_is_unreachable():
    import httpx

    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    sent = _call(_split_front(refuse), "POST", "/v1/models/m:predict", b'{"instances": [[1]]}')
    assert sent[0]["status"] == 502
    assert orjson.loads(sent[1]["body"])["error"].startswith("predictor at http://predictor:80 unreachable")
