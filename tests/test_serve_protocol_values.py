"""V2 JSON tensor values are converted exactly or refused with the reason: no silent coercion."""

from __future__ import annotations

import orjson
import pytest

from nbmagic.serve.protocol import ProtocolError, decode_request

REFUSED = [
    ("INT32", [1.5, 2.7], "input 'x': value 1.5 is not an integer (datatype INT32)"),
    ("UINT8", [0.9], "input 'x': value 0.9 is not an integer (datatype UINT8)"),
    ("INT32", [1.0, 2.0], "input 'x': value 1.0 is not an integer (datatype INT32)"),
    ("FP32", [1e40], "input 'x': value 1e+40 overflows FP32"),
    ("FP16", [1.0, 1e5], "input 'x': value 100000.0 overflows FP16"),
    ("BOOL", ["no"], "input 'x': data is not BOOL: it holds strings"),
    ("BOOL", [1, 0], "input 'x': data is not BOOL: it holds numbers"),
    ("FP32", ["2"], "input 'x': data is not FP32: it holds strings"),
    ("INT32", [True], "input 'x': data is not INT32: it holds booleans"),
    ("UINT8", [300], "input 'x': value 300 is out of UINT8 range [0, 255]"),
    ("INT8", [-200], "input 'x': value -200 is out of INT8 range [-128, 127]"),
    ("UINT32", [-1], "input 'x': value -1 is out of UINT32 range [0, 4294967295]"),
]
KEPT = [
    ("INT8", [-128, 127], "int8"),
    ("UINT64", [2**64 - 1], "uint64"),
    ("INT64", [2**63 - 1, -(2**63)], "int64"),
    ("FP32", [1, 2], "float32"),
    ("FP64", [1e308], "float64"),
    ("BOOL", [True, False], "bool"),
]


def body(datatype, data):
    return orjson.dumps({"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}]})


@pytest.mark.parametrize("datatype,data,message", REFUSED)
def test_decode_request_refuses_values_the_datatype_would_change(datatype, data, message):
    with pytest.raises(ProtocolError) as info:
        decode_request(body(datatype, data))
    assert str(info.value) == message


@pytest.mark.parametrize("datatype,data,dtype", KEPT)
def test_decode_request_keeps_exact_values(datatype, data, dtype):
    array = decode_request(body(datatype, data)).inputs["x"]
    assert (array.dtype.name, array.tolist()) == (dtype, data)
