"""HTTP requests to a KServe model server (local or on a cluster): V1 and V2 bodies, errors with the server's message."""

from __future__ import annotations

from typing import Any

from nbmagic.serve.errors import PredictError, ServeError


def request_body(data: Any, protocol: str) -> tuple[bytes, dict[str, str]]:
    """The V1 or V2 body for ``data`` and its headers (a ready body dict is sent as it is). V2 tensors keep
    their dtype; FP16 goes as a binary tensor, which JSON cannot carry."""
    import orjson

    from nbmagic.serve import protocol as v2

    if protocol not in ("v1", "v2"):
        raise ServeError(f"protocol '{protocol}' is not supported: use v1 or v2")
    if isinstance(data, dict):
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": "application/json"}
    if protocol == "v1":
        return orjson.dumps({"instances": _plain(data)}), {"content-type": "application/json"}
    array = v2.as_array(data)
    try:
        return v2.encode_request({"input-0": array})
    except v2.ProtocolError:
        raise ServeError(f"cannot send an array of dtype {array.dtype} with the V2 protocol") from None


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

    from nbmagic.serve.protocol import DTYPES

    def values(out: dict[str, Any]) -> Any:
        shape = out.get("shape") or [len(out["data"])]
        return np.asarray(out["data"], dtype=DTYPES.get(out.get("datatype"), None)).reshape(shape).tolist()

    if len(outputs) == 1:
        return values(outputs[0])
    return {out.get("name", f"output-{i}"): values(out) for i, out in enumerate(outputs)}


def post(
    session: Any, url: str, body: tuple[bytes, dict[str, str]], server: str, timeout: float = 60.0
) -> dict[str, Any]:
    """POST the body; a non-2xx answer raises PredictError carrying the server's own error message. Binary V2
    outputs come back in ``data`` like JSON ones."""
    import requests

    from nbmagic.serve import protocol as v2

    content, headers = body
    try:
        response = session.post(url, data=content, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise PredictError(f"server '{server}' is not reachable at {url}: {type(exc).__name__}") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        raise PredictError(f"server '{server}' answered {response.status_code}: {str(message).strip()}")
    length = response.headers.get(v2.HEADER_LENGTH)
    if length is None:
        return response.json()
    head, arrays = v2.decode_response(response.content, length)
    for out in head.get("outputs") or []:
        out.setdefault("data", arrays[out["name"]].ravel().tolist())
    return head
