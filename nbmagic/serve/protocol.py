"""The Open Inference Protocol (V2) over REST: request and response bodies <-> numpy arrays of the declared dtype.

JSON tensors (``data``) and binary tensors (``parameters.binary_data_size`` after a JSON header of
``Inference-Header-Content-Length`` bytes) are both read and written. Every problem with a body is a
``ProtocolError`` whose message names the tensor; servers answer it as 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEADER_LENGTH = "inference-header-content-length"
DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_NAMES = {v: k for k, v in DTYPES.items() if k != "BYTES"}


class ProtocolError(ValueError):
    """A request the protocol cannot accept (answered 400)."""


@dataclass
class Request:
    """A decoded V2 inference request."""

    id: str | None
    inputs: dict[str, Any]
    outputs: list[tuple[str, bool | None]] = field(default_factory=list)  # requested: (name, binary_data)
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        """Whether output ``name`` is answered as a binary tensor."""
        for requested, flag in self.outputs:
            if requested == name and flag is not None:
                return bool(flag)
        return self.binary_output


def datatype(array: Any) -> str:
    """The V2 datatype of a numpy array (str/bytes/object arrays are BYTES)."""
    if array.dtype.kind in "USO":
        return "BYTES"
    name = _NAMES.get(array.dtype.name)
    if name is None:
        raise ProtocolError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


def _loads(data: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not JSON: {exc}") from None


def decode_request(body: bytes, header_length: str | int | None = None) -> Request:
    """Decode a V2 request body (JSON, or JSON header + binary tensors)."""
    size = len(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length '{header_length}' is not a number") from None
        if not 0 < size <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {size} is outside the body ({len(body)} bytes)")
    head = _loads(body[:size])
    if not isinstance(head, dict):
        raise ProtocolError('V2 request body must be a JSON object with "inputs"')
    inputs = head.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError('V2 request needs "inputs": a non-empty list of tensors')
    tensors: dict[str, Any] = {}
    offset = size
    for tensor in inputs:
        array, offset = _tensor(tensor, body, offset)
        tensors[tensor["name"]] = array
    if offset != len(body):
        raise ProtocolError(f"{len(body) - offset} bytes after the binary tensors belong to no input")
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError('"id" must be a string')
    parameters = head.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError('"parameters" must be an object')
    outputs = []
    for out in head.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ProtocolError('each requested output needs a "name"')
        params = out.get("parameters") or {}
        flag = params.get("binary_data") if isinstance(params, dict) else None
        outputs.append((out["name"], flag))
    return Request(request_id, tensors, outputs, bool(parameters.get("binary_data_output", False)), parameters)


def _tensor(tensor: Any, body: bytes, offset: int) -> tuple[Any, int]:
    import numpy as np

    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise ProtocolError('each input needs a "name", a "shape" and a "datatype"')
    name = tensor["name"]
    shape, kind = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, not {shape!r}")
    if kind not in DTYPES:
        raise ProtocolError(f"input '{name}': datatype {kind!r} is not one of {', '.join(DTYPES)}")
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if "data" in tensor:
        data = tensor["data"]
        try:
            if kind == "BYTES":
                flat = _flatten(data)
                array = np.empty(len(flat), dtype=object)
                array[:] = flat
            else:
                array = _typed(name, kind, np.asarray(data).ravel())
        except ProtocolError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"input '{name}': data is not {kind}: {exc}") from None
    elif isinstance(params, dict) and "binary_data_size" in params:
        length = params["binary_data_size"]
        if not isinstance(length, int) or length < 0 or offset + length > len(body):
            raise ProtocolError(f"input '{name}': binary_data_size {length!r} runs past the end of the body")
        raw = body[offset : offset + length]
        offset += length
        array = _from_bytes(name, kind, raw)
    else:
        raise ProtocolError(f"input '{name}' has neither \"data\" nor parameters.binary_data_size")
    if array.size != count:
        raise ProtocolError(f"input '{name}': {array.size} values do not fit shape {shape} ({count} expected)")
    return array.reshape(shape), offset


_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}  # the rest are integer types: "iu"


def _typed(name: str, kind: str, raw: Any) -> Any:
    """JSON values as ``kind``, refusing any value the conversion would change (no silent coercion)."""
    import numpy as np

    target = np.dtype(DTYPES[kind])
    if raw.size == 0:
        return raw.astype(target)
    allowed = _KINDS.get(kind, "iu")
    if raw.dtype.kind == "f" and allowed == "iu":
        values = raw.tolist()
        bad = next((v for v in values if not float(v).is_integer() or abs(v) >= 2**63), values[0])
        raise ProtocolError(f"input '{name}': value {bad!r} is not an integer (datatype {kind})")
    if raw.dtype.kind not in allowed:
        found = {"b": "booleans", "i": "numbers", "u": "numbers", "U": "strings"}.get(raw.dtype.kind, "mixed values")
        if raw.dtype.kind == "O" and allowed == "iu" and all(type(v) is int for v in raw.tolist()):
            found = f"integers out of {kind} range"
        raise ProtocolError(f"input '{name}': data is not {kind}: it holds {found}")
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = int(raw.min()), int(raw.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise ProtocolError(f"input '{name}': value {bad} is out of {kind} range [{info.min}, {info.max}]")
    with np.errstate(over="ignore"):
        array = raw.astype(target)
    if target.kind == "f":
        overflow = np.isinf(array) & np.isfinite(raw)
        if overflow.any():
            bad = raw[overflow.argmax()]
            raise ProtocolError(f"input '{name}': value {bad} overflows {kind}")
    elif not np.array_equal(array, raw):
        raise ProtocolError(f"input '{name}': data is not {kind}: values change when converted")
    return array


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    for item in data:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _from_bytes(name: str, kind: str, raw: bytes) -> Any:
    import numpy as np

    if kind == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"input '{name}': BYTES tensor ends inside a length prefix")
            (n,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + n > len(raw):
                raise ProtocolError(f"input '{name}': BYTES element runs past its binary_data_size")
            items.append(_text(raw[pos : pos + n]))
            pos += n
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    dtype = np.dtype(DTYPES[kind])
    if len(raw) % dtype.itemsize:
        raise ProtocolError(f"input '{name}': {len(raw)} bytes is not a whole number of {kind} values")
    return np.frombuffer(raw, dtype=dtype)


def _text(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def as_array(value: Any) -> Any:
    """A model output as a numpy array (pandas to numpy; str/bytes to an object array)."""
    import numpy as np

    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind in "US":
        array = array.astype(object)
    return array


def encode_response(
    model_name: str,
    outputs: dict[str, Any],
    request: Request | None = None,
    model_version: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The V2 response body (JSON, or JSON header + binary tensors) and its extra headers."""
    tensors, raws = _tensors(outputs, lambda name, kind: request is not None and request.binary(name))
    head: dict[str, Any] = {"model_name": model_name, "outputs": tensors}
    if model_version is not None:
        head["model_version"] = model_version
    head["id"] = (request.id if request is not None else None) or ""
    return _framed(head, raws)


def _tensors(values: dict[str, Any], binary: Callable[[str, str], bool]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The V2 tensor entries of named values, and the binary parts of those ``binary(name, datatype)`` picks."""
    tensors, raws = [], []
    for name, value in values.items():
        array = as_array(value)
        kind = datatype(array)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": kind}
        if binary(name, kind):
            raw = _to_bytes(array, kind)
            entry["parameters"] = {"binary_data_size": len(raw)}
            raws.append(raw)
        else:
            entry["data"] = _json_values(name, array, kind)
        tensors.append(entry)
    return tensors, raws


def _framed(head: dict[str, Any], raws: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body of a V2 message and its headers: the JSON head, then any binary parts after it."""
    import orjson

    body = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raws:
        return body, {"content-type": "application/json"}
    return body + b"".join(raws), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(body))}


def _json_values(name: str, array: Any, kind: str) -> Any:
    flat = array.ravel()
    if kind != "BYTES":
        return flat if flat.flags.c_contiguous else flat.copy()
    values = []
    for v in flat.tolist():
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"output '{name}' holds bytes that are not UTF-8: ask for it with binary_data"
                ) from None
        elif not isinstance(v, str):
            v = str(v)
        values.append(v)
    return values


def _to_bytes(array: Any, kind: str) -> bytes:
    import numpy as np

    if kind != "BYTES":
        return np.ascontiguousarray(array).tobytes()
    parts = []
    for v in array.ravel().tolist():
        data = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def encode_request(
    inputs: dict[str, Any],
    *,
    binary: bool = False,
    request_id: str | None = None,
    outputs: list[str] | None = None,
    binary_output: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A V2 request body for named numpy inputs; FP16 always goes binary (JSON cannot carry it exactly)."""
    tensors, raws = _tensors(inputs, lambda name, kind: binary or kind == "FP16")
    head: dict[str, Any] = {"inputs": tensors}
    if request_id is not None:
        head["id"] = request_id
    if outputs:
        head["outputs"] = [{"name": n} for n in outputs]
    if binary_output:
        head["parameters"] = {"binary_data_output": True}
    return _framed(head, raws)


def decode_response(body: bytes, header_length: str | int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the JSON head, name -> numpy array) of a V2 response, binary outputs included."""
    size = int(header_length) if header_length is not None else len(body)
    head = _loads(body[:size])
    arrays: dict[str, Any] = {}
    offset = size
    for out in head.get("outputs") or []:
        array, offset = _tensor(out, body, offset)
        arrays[out["name"]] = array
    return head, arrays
