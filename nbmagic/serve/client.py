"""HTTP requests to a KServe model server (local or on a cluster): V1 and V2 bodies, errors with the server's message."""

from __future__ import annotations

from typing import Any

from nbmagic.serve.errors import PredictError, ServeError

_V2_TYPES = {
    "f": {2: "FP16", 4: "FP32", 8: "FP64"},
    "i": {1: "INT8", 2: "INT16", 4: "INT32", 8: "INT64"},
    "u": {1: "UINT8", 2: "UINT16", 4: "UINT32", 8: "UINT64"},
    "b": {1: "BOOL"},
}


def request_body(data: Any, protocol: str) -> dict[str, Any]:
    """A V1 or V2 JSON body for ``data`` (a ready body dict is sent as it is)."""
    if protocol not in ("v1", "v2"):
        raise ServeError(f"protocol '{protocol}' is not supported: use v1 or v2")
    if isinstance(data, dict):
        return data
    if protocol == "v1":
        return {"instances": _plain(data)}
    import numpy as np

    array = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data)
    kind = array.dtype.kind
    if kind in "USO":
        datatype = "BYTES"
        values = [str(v) for v in array.ravel().tolist()]
    elif kind in _V2_TYPES and array.dtype.itemsize in _V2_TYPES[kind]:
        datatype = _V2_TYPES[kind][array.dtype.itemsize]
        values = array.ravel().tolist()
    else:
        raise ServeError(f"cannot send an array of dtype {array.dtype} with the V2 protocol")
    return {"inputs": [{"name": "input-0", "shape": list(array.shape), "datatype": datatype, "data": values}]}


def _plain(data: Any) -> Any:
    if hasattr(data, "to_numpy"):
        data = data.to_numpy()
    return data.tolist() if hasattr(data, "tolist") else list(data) if isinstance(data, tuple) else data


def infer_url(base_url: str, name: str, protocol: str) -> str:
    base = base_url.rstrip("/")
    return f"{base}/v1/models/{name}:predict" if protocol == "v1" else f"{base}/v2/models/{name}/infer"


def predictions(response: dict[str, Any]) -> Any:
    """The predictions of a V1 or V2 response: V1 ``predictions``; V2 the output reshaped (several: name -> it)."""
    if "predictions" in response:
        return response["predictions"]
    outputs = response.get("outputs") or []
    if not outputs:
        return response
    import numpy as np

    def values(out: dict[str, Any]) -> Any:
        shape = out.get("shape") or [len(out["data"])]
        dtype = object if out.get("datatype") == "BYTES" else None
        return np.asarray(out["data"], dtype=dtype).reshape(shape).tolist()

    if len(outputs) == 1:
        return values(outputs[0])
    return {out.get("name", f"output-{i}"): values(out) for i, out in enumerate(outputs)}


def post(session: Any, url: str, body: dict[str, Any], server: str, timeout: float = 60.0) -> dict[str, Any]:
    """POST JSON; a non-2xx answer raises PredictError carrying the server's own error message."""
    import requests

    try:
        response = session.post(url, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise PredictError(f"server '{server}' is not reachable at {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        raise PredictError(f"server '{server}' answered {response.status_code}: {str(message).strip()}")
    return response.json()
