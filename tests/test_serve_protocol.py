"""%serve speaks the Open Inference Protocol (V2): raw HTTP for each rule, then clients nobody here wrote
(tritonclient[http], kserve's InferenceRESTClient), against the real server in process and in the split layout."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import orjson
import pytest
import requests

from helpers.serve_shell import serve_shell

pytestmark = pytest.mark.slow

NOTEBOOK = """
import numpy as np
from sklearn.linear_model import LogisticRegression

class Echo:
    def predict(self, x):
        return x

echo = Echo()
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 4))
clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
"""
LAYOUTS = ["in-process", "split"]


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    with serve_shell(tmp_path_factory.mktemp("home"), NOTEBOOK) as ip:
        yield ip


def _served(shell, variable: str, layout: str):
    """``%serve`` of the notebook's ``variable`` in ``layout`` (one of LAYOUTS), named after both."""
    split = " --split" if layout == "split" else ""
    return shell.run_line_magic("serve", f"{variable} --name {variable}-{layout}{split}")


@pytest.fixture(scope="module", params=LAYOUTS)
def echo(shell, request):
    srv = _served(shell, "echo", request.param)
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=LAYOUTS)
def clf(shell, request):
    srv = _served(shell, "clf", request.param)
    yield srv
    srv.stop()


def infer(server, body, headers=None):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(f"{server.url}/v2/models/{server.name}/infer", data=data, headers=headers or {}, timeout=30)


def tensor(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


# --- raw HTTP: one test per rule ----------------------------------------------------------------------------------


def test_request_id_is_echoed_or_generated(echo):
    answer = infer(echo, {"id": "req-42", "inputs": [tensor("x", [1, 2], "FP32", [1.0, 2.0])]}).json()
    assert answer["id"] == "req-42"
    generated = infer(echo, {"inputs": [tensor("x", [1, 2], "FP32", [1.0, 2.0])]}).json()["id"]
    assert generated and generated != "req-42"


@pytest.mark.parametrize(
    "datatype,data,shape",
    [
        ("FP32", [0.1, 0.2, 0.3, 0.4], [1, 4]),
        ("FP64", [0.1, 0.2], [2, 1]),
        ("INT8", [-128, 0, 127], [3]),
        ("UINT8", [0, 255], [1, 2]),
        ("INT32", [1, -2, 3, 4], [2, 2]),
        ("INT64", [2**40, -1], [2]),
        ("BOOL", [True, False], [2]),
        ("BYTES", ["ab", "c"], [2, 1]),
        ("FP32", [], [0, 4]),
    ],
)
def test_json_tensors_keep_datatype_values_and_shape(echo, datatype, data, shape):
    answer = infer(echo, {"inputs": [tensor("x", shape, datatype, data)]})
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    assert (out["datatype"], out["shape"], out["data"]) == (datatype, shape, data)


def test_binary_tensors_keep_datatype_both_ways(echo):
    values = np.array([[0.1, -2.5], [3.25, 65504.0]], dtype=np.float16)
    head = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP16", "parameters": {"binary_data_size": 8}}],
            "parameters": {"binary_data_output": True},
        }
    )
    answer = infer(
        echo,
        head + values.tobytes(),
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    out = orjson.loads(answer.content[:length])["outputs"][0]
    assert (out["datatype"], out["shape"], out["parameters"]["binary_data_size"]) == ("FP16", [2, 2], 8)
    assert "data" not in out
    assert np.frombuffer(answer.content[length:], dtype=np.float16).reshape(2, 2).tolist() == values.tolist()


def test_binary_bytes_tensor(echo):
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"hello", b"", b"\xc3\xa9t\xc3\xa9"))
    head = orjson.dumps(
        {"inputs": [{"name": "s", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    )
    answer = infer(echo, head + raw, {"Inference-Header-Content-Length": str(len(head))})
    assert answer.json()["outputs"][0]["data"] == ["hello", "", "été"]


def test_shape_mismatch_is_400_with_the_reason(echo):
    answer = infer(echo, {"inputs": [tensor("x", [1, 4], "FP32", [1.0, 2.0, 3.0])]})
    assert answer.status_code == 400
    assert answer.json() == {"error": "input 'x': 3 values do not fit shape [1, 4] (4 expected)"}
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}
    )
    answer = infer(echo, head + np.zeros(3, np.float32).tobytes(), {"Inference-Header-Content-Length": str(len(head))})
    assert answer.status_code == 400
    assert answer.json() == {"error": "input 'x': 3 values do not fit shape [1, 4] (4 expected)"}


@pytest.mark.parametrize(
    "body,message",
    [
        ({"inputs": "nope"}, 'V2 request needs "inputs"'),
        ({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}, "input 'x': datatype None is not one of"),
        ({"inputs": [tensor("x", [2], "INT32", ["a", "b"])]}, "input 'x': data is not INT32"),
        ({"inputs": [tensor("x", [-1], "FP32", [1.0])]}, "input 'x': shape must be a list of non-negative integers"),
    ],
)
def test_malformed_requests_are_400_protocol_errors(echo, body, message):
    answer = infer(echo, body)
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"} and answer.json()["error"].startswith(message)


@pytest.mark.parametrize(
    "datatype,data,message",
    [
        ("INT32", [1.5, 2.7], "input 'x': value 1.5 is not an integer (datatype INT32)"),
        ("UINT8", [0.9], "input 'x': value 0.9 is not an integer (datatype UINT8)"),
        ("FP32", [1e40], "input 'x': value 1e+40 overflows FP32"),
        ("BOOL", ["no"], "input 'x': data is not BOOL: it holds strings"),
        ("FP32", ["2"], "input 'x': data is not FP32: it holds strings"),
        ("UINT8", [300], "input 'x': value 300 is out of UINT8 range [0, 255]"),
        ("INT8", [-200], "input 'x': value -200 is out of INT8 range [-128, 127]"),
    ],
)
def test_json_values_the_datatype_would_change_are_400(echo, datatype, data, message):
    answer = infer(echo, {"inputs": [tensor("x", [len(data)], datatype, data)]})
    assert answer.status_code == 400
    assert answer.json() == {"error": message}


def test_requested_and_named_outputs_and_binary_output(clf, shell):
    X = shell.user_ns["X"][:3]
    model = shell.user_ns["clf"]
    plain = infer(clf, {"inputs": [tensor("x", [3, 4], "FP64", X.ravel().tolist())]}).json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in plain["outputs"]] == [("predict", "INT64", [3])]
    asked = infer(
        clf,
        {
            "inputs": [tensor("x", [3, 4], "FP64", X.ravel().tolist())],
            "outputs": [{"name": "predict_proba"}, {"name": "predict", "parameters": {"binary_data": True}}],
        },
    )
    length = int(asked.headers["inference-header-content-length"])
    head = orjson.loads(asked.content[:length])
    proba, label = head["outputs"]
    assert (proba["name"], proba["datatype"], proba["shape"]) == ("predict_proba", "FP64", [3, 2])
    assert np.allclose(np.array(proba["data"]).reshape(3, 2), model.predict_proba(X))
    assert label["name"] == "predict" and "data" not in label
    assert np.frombuffer(asked.content[length:], dtype=np.int64).tolist() == model.predict(X).tolist()
    missing = infer(
        clf, {"inputs": [tensor("x", [1, 4], "FP64", [0, 0, 0, 0])], "outputs": [{"name": "probabilities"}]}
    )
    assert missing.status_code == 400
    assert "has no output 'probabilities' (outputs: predict, predict_proba)" in missing.json()["error"]


def test_model_metadata_has_inputs_outputs_and_version(clf):
    infer(clf, {"inputs": [tensor("x", [1, 4], "FP64", [0.0, 0.0, 0.0, 0.0])]})
    meta = requests.get(f"{clf.url}/v2/models/{clf.name}", timeout=10).json()
    assert meta["name"] == clf.name and meta["versions"] and all(meta["versions"])
    assert meta["inputs"] and meta["inputs"][0]["datatype"] == "FP64" and meta["inputs"][0]["shape"][-1] == 4
    assert {o["name"] for o in meta["outputs"]} >= {"predict"}


def test_handle_sends_fp16_binary_and_keeps_dtypes(echo):
    half = np.array([[0.5, 1.5]], dtype=np.float16)
    assert echo.predict(half, protocol="v2") == [[0.5, 1.5]]
    out = echo.predict(half, protocol="v2", raw=True)["outputs"][0]
    assert out["datatype"] == "FP16"
    assert (
        echo.predict(np.array([[1, 2]], dtype=np.int32), protocol="v2", raw=True)["outputs"][0]["datatype"] == "INT32"
    )


# --- clients nobody here wrote ------------------------------------------------------------------------------------


def test_tritonclient_http(echo):
    tritonclient_http = pytest.importorskip("tritonclient.http")
    triton = tritonclient_http.InferenceServerClient(url=echo.url.removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(echo.name)
    meta = triton.get_model_metadata(echo.name)
    assert meta["name"] == echo.name and meta["versions"]
    cases = [
        ("FP32", np.array([[0.1, 0.2, 0.3]], dtype=np.float32)),
        ("FP16", np.array([[0.5, -1.25]], dtype=np.float16)),
        ("INT32", np.array([[7, -8]], dtype=np.int32)),
        ("BYTES", np.array([[b"abc"], [b"de"]], dtype=object)),
    ]
    for datatype, array in cases:
        for binary in (False, True):
            if datatype == "FP16" and not binary:
                continue  # tritonclient itself sends FP16 only as binary
            inp = tritonclient_http.InferInput("x", list(array.shape), datatype)
            inp.set_data_from_numpy(array, binary_data=binary)
            wanted = tritonclient_http.InferRequestedOutput("predict", binary_data=binary)
            result = triton.infer(echo.name, [inp], outputs=[wanted], request_id=f"t-{datatype}")
            got = result.as_numpy("predict")
            assert result.get_response()["id"] == f"t-{datatype}"
            if datatype == "BYTES":
                assert [
                    [v if isinstance(v, bytes) else v.encode() for v in row] for row in got.tolist()
                ] == array.tolist()
            else:
                assert got.dtype == array.dtype and got.shape == array.shape and (got == array).all(), (
                    datatype,
                    binary,
                )
    triton.close()


def test_kserve_inference_rest_client_v1_and_v2(clf, shell):
    from kserve.inference_client import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import InferInput, InferRequest

    X = shell.user_ns["X"][:2].astype(np.float32)
    expected = shell.user_ns["clf"].predict(X).tolist()

    async def run():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            got_v1 = await v1.infer(clf.url, {"instances": X.tolist()}, model_name=clf.name)
            tensor_in = InferInput(name="x", shape=list(X.shape), datatype="FP32")
            tensor_in.set_data_from_numpy(X, binary_data=True)
            got_v2 = await v2.infer(
                clf.url,
                InferRequest(model_name=clf.name, infer_inputs=[tensor_in], request_id="k-1"),
                model_name=clf.name,
            )
            return got_v1, got_v2
        finally:
            await v1.close()
            await v2.close()

    got_v1, got_v2 = asyncio.run(run())
    assert got_v1 == {"predictions": expected}
    assert got_v2.id == "k-1" and got_v2.outputs[0].name == "predict"
    assert got_v2.outputs[0].as_numpy().tolist() == expected


def test_kserve_grpc_client_keeps_id_and_dtype(shell):
    from kserve.inference_client import InferenceGRPCClient
    from kserve.protocol.infer_type import InferInput, InferRequest

    srv = shell.run_line_magic("serve", "clf --name clf-grpc --grpc")
    X = shell.user_ns["X"][:3].astype(np.float32)

    async def run():
        grpc_client = InferenceGRPCClient(f"127.0.0.1:{srv.grpc_port}")
        try:
            tensor_in = InferInput(name="x", shape=list(X.shape), datatype="FP32")
            tensor_in.set_data_from_numpy(X, binary_data=False)
            return await grpc_client.infer(
                InferRequest(model_name=srv.name, infer_inputs=[tensor_in], request_id="g-1")
            )
        finally:
            await grpc_client.close()

    try:
        answer = asyncio.run(run())
    finally:
        srv.stop()
    out = answer.outputs[0]
    assert answer.id == "g-1" and (out.name, out.datatype) == ("predict", "INT64")
    assert out.as_numpy().tolist() == shell.user_ns["clf"].predict(X).tolist()
