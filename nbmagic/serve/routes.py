"""Lean inference routes put in front of KServe's own on the ModelServer's app: V1 predict, V2 infer and V2 model
metadata. They read the body once with orjson, keep tensors as numpy arrays of their declared dtype, and answer
errors with the protocol's ``{"error": "..."}`` body. KServe's routes still serve health, readiness, model lists
and gRPC.
"""

from __future__ import annotations

import uuid
from typing import Any

from nbmagic.serve.endpoint import Endpoint, InputError
from nbmagic.serve.protocol import HEADER_LENGTH, ProtocolError, decode_request, decode_response, encode_request
from nbmagic.serve.protocol import encode_response as encode_v2


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Any:
    import orjson
    from starlette.responses import Response

    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error(status: int, message: str) -> Any:
    return _json(status, {"error": message})


def _to_list(result: Any) -> Any:
    from nbmagic.serve.protocol import as_array

    if isinstance(result, dict):
        return {str(k): _to_list(v) for k, v in result.items()}
    array = as_array(result)
    if array.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.tolist()]
    return array


class Forward:
    """The split layout's hop to the predictor server (V1 or V2, binary tensors so dtypes survive)."""

    def __init__(self, host: str, protocol: str, name: str) -> None:
        self.base = f"http://{host}"
        self.protocol = protocol
        self.name = name
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=60.0)
        return self._client

    async def __call__(self, features: Any, requested: list[str] | None) -> dict[str, Any]:
        import orjson

        if self.protocol == "v1":
            url = f"{self.base}/v1/models/{self.name}:predict"
            response = await self.client.post(
                url, content=orjson.dumps({"instances": _to_list(features)}, option=orjson.OPT_SERIALIZE_NUMPY)
            )
            payload = self._check(response)
            predictions = payload["predictions"]
            if isinstance(predictions, dict):
                return predictions
            return {(requested or ["output-0"])[0]: predictions}
        inputs = features if isinstance(features, dict) else {"input-0": features}
        body, headers = encode_request(inputs, binary=True, outputs=requested, binary_output=True)
        response = await self.client.post(f"{self.base}/v2/models/{self.name}/infer", content=body, headers=headers)
        self._check(response)
        _head, arrays = decode_response(response.content, response.headers.get(HEADER_LENGTH))
        return arrays

    def _check(self, response: Any) -> Any:
        import orjson

        if response.status_code >= 400:
            try:
                message = orjson.loads(response.content).get("error") or response.text
            except (orjson.JSONDecodeError, AttributeError):
                message = response.text
            raise InputError(f"predictor answered {response.status_code}: {message}")
        return orjson.loads(response.content) if self.protocol == "v1" else None


def build_routes(endpoint: Endpoint, forward: Forward | None = None) -> list[Any]:
    """Starlette routes for ``endpoint`` (with ``forward``: preprocess here, predict on the predictor)."""
    from starlette.routing import Route

    name = endpoint.name

    async def predict(features: Any, requested: list[str] | None) -> dict[str, Any]:
        if forward is not None:
            return await forward(features, requested)
        return endpoint.predict(features, requested)

    async def v2_infer(request: Any) -> Any:
        if request.path_params["model"] != name:
            return error(404, f"Model with name {request.path_params['model']} does not exist.")
        body = await request.body()
        try:
            req = decode_request(body, request.headers.get(HEADER_LENGTH))
            if req.id is None:
                req.id = str(uuid.uuid4())
            data = next(iter(req.inputs.values())) if len(req.inputs) == 1 else req.inputs
            features = endpoint.preprocess(data)
            outputs = await predict(features, [n for n, _ in req.outputs] or None)
            if not endpoint.outputs_meta:
                endpoint.observe(req.inputs, outputs)
            payload, headers = encode_v2(name, outputs, req, endpoint.version)
        except ProtocolError as exc:
            return error(400, str(exc))
        from starlette.responses import Response

        return Response(payload, status_code=200, headers=headers)

    async def v1_predict(request: Any) -> Any:
        import orjson

        if request.path_params["model"] != name:
            return error(404, f"Model with name {request.path_params['model']} does not exist.")
        try:
            try:
                payload = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"request body is not JSON: {exc}") from None
            rows = payload.get("instances", payload.get("inputs")) if isinstance(payload, dict) else None
            if not isinstance(rows, list):
                raise ProtocolError('V1 request needs "instances": a list, e.g. {"instances": [[1, 2, 3]]}')
            outputs = await predict(endpoint.preprocess(rows), None)
        except ProtocolError as exc:
            return error(400, str(exc))
        result = next(iter(outputs.values())) if len(outputs) == 1 and not _was_dict(outputs, endpoint) else outputs
        return _json(200, {"predictions": _to_list(result)})

    async def v2_metadata(request: Any) -> Any:
        if request.path_params["model"] != name:
            return error(404, f"Model with name {request.path_params['model']} does not exist.")
        return _json(200, endpoint.metadata())

    return [
        Route("/v2/models/{model}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/v1/models/{model}:predict", v1_predict, methods=["POST"]),
        Route("/v2/models/{model}", v2_metadata, methods=["GET"]),
    ]


def _was_dict(outputs: dict[str, Any], endpoint: Endpoint) -> bool:
    """A dict result (one output per key) rather than the model's own single output."""
    return bool(endpoint.outputs) and next(iter(outputs)) not in endpoint.outputs
