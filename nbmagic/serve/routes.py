"""Lean inference routes in front of the ModelServer's app: V1 predict, V2 infer and V2 model metadata. They read
the body once with orjson, keep tensors as numpy arrays of their declared dtype, and answer errors with the
protocol's ``{"error": "..."}`` body. KServe's app still serves health, readiness, model lists and the rest; gRPC
goes through the kserve.Model.
"""

from __future__ import annotations

import uuid
from typing import Any

from nbmagic.serve.endpoint import Endpoint, InputError
from nbmagic.serve.protocol import HEADER_LENGTH, ProtocolError, decode_request, decode_response, encode_request
from nbmagic.serve.protocol import encode_response as encode_v2

Answer = tuple[int, bytes, dict[str, str]]  # status, body, headers


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    import orjson

    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return status, body, {"content-type": "application/json", **(headers or {})}


def error(status: int, message: str) -> Any:
    """A starlette response with the protocol's error body (for FastAPI exception handlers)."""
    from starlette.responses import Response

    status, body, headers = _json(status, {"error": message})
    return Response(body, status_code=status, headers=headers)


def _error(status: int, message: str) -> Answer:
    return _json(status, {"error": message})


def _to_list(result: Any) -> Any:
    from nbmagic.serve.protocol import as_array

    if isinstance(result, dict):
        return {str(k): _to_list(v) for k, v in result.items()}
    array = as_array(result)
    if array.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.tolist()]
    return array


class PredictorError(ProtocolError):
    """The predictor failed, not the request: it answered 5xx or 404, or could not be reached (answered 502)."""

    status = 502


def _failed(exc: ProtocolError) -> Answer:
    return _error(getattr(exc, "status", 400), str(exc))


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
        import httpx

        try:
            return await self._forward(features, requested)
        except httpx.HTTPError as exc:
            raise PredictorError(f"predictor at {self.base} unreachable: {type(exc).__name__}: {exc}") from None

    async def _forward(self, features: Any, requested: list[str] | None) -> dict[str, Any]:
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
            failure = PredictorError if response.status_code >= 500 or response.status_code == 404 else InputError
            raise failure(f"predictor answered {response.status_code}: {message}")
        return orjson.loads(response.content) if self.protocol == "v1" else None


class Front:
    """An ASGI app in front of KServe's FastAPI app: V1 predict, V2 infer and V2 model metadata are answered here,
    straight from uvicorn's scope (no middleware stack, router or request objects on the way); every other
    request, and these paths with another method, go to KServe's app unchanged. ``forward``: preprocess here,
    predict on the predictor (split layout)."""

    def __init__(self, app: Any, endpoint: Endpoint, forward: Forward | None = None) -> None:
        self.app = app
        self.endpoint = endpoint
        self.forward = forward

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = _match(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        handler, model, version = route
        if model != self.endpoint.name:
            answer = _error(404, f"Model with name {model} does not exist.")
        elif version is not None and version != self.endpoint.version:
            answer = _error(404, f"Model {model} has no version {version} (versions: {self.endpoint.version}).")
        elif handler is None:  # the right version's readiness: KServe's own answer for the model
            path = f"/v2/models/{model}/ready"
            await self.app(dict(scope, path=path, raw_path=path.encode()), receive, send)
            return
        else:
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            try:
                answer = await handler(self, body, scope)
            except Exception as exc:  # noqa: BLE001 - as KServe's app answers any other failure: 500 {"error"}
                from kserve.errors import generic_exception_handler

                response = await generic_exception_handler(None, exc)
                await response(scope, receive, send)
                return
        status, payload, headers = answer
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})

    async def _predict(self, features: Any, requested: list[str] | None) -> dict[str, Any]:
        if self.forward is not None:
            return await self.forward(features, requested)
        return self.endpoint.predict(features, requested)

    async def v2_infer(self, body: bytes, scope: dict[str, Any]) -> Answer:
        endpoint = self.endpoint
        try:
            req = decode_request(body, _header(scope, HEADER_LENGTH.encode()))
            if req.id is None:
                req.id = str(uuid.uuid4())
            data = next(iter(req.inputs.values())) if len(req.inputs) == 1 else req.inputs
            features = endpoint.preprocess(data)
            outputs = await self._predict(features, [n for n, _ in req.outputs] or None)
            if not endpoint.outputs_meta:
                endpoint.observe(req.inputs, outputs)
            payload, headers = encode_v2(endpoint.name, outputs, req, endpoint.version)
        except ProtocolError as exc:
            return _failed(exc)
        return 200, payload, headers

    async def v1_predict(self, body: bytes, _scope: dict[str, Any]) -> Answer:
        import orjson

        endpoint = self.endpoint
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"request body is not JSON: {exc}") from None
            rows = payload.get("instances", payload.get("inputs")) if isinstance(payload, dict) else None
            if not isinstance(rows, list):
                raise ProtocolError('V1 request needs "instances": a list, e.g. {"instances": [[1, 2, 3]]}')
            outputs = await self._predict(endpoint.preprocess(rows), None)
        except ProtocolError as exc:
            return _failed(exc)
        result = next(iter(outputs.values())) if len(outputs) == 1 and not _was_dict(outputs, endpoint) else outputs
        return _json(200, {"predictions": _to_list(result)})

    async def v2_metadata(self, _body: bytes, _scope: dict[str, Any]) -> Answer:
        return _json(200, self.endpoint.metadata())


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _match(scope: dict[str, Any]) -> tuple[Any, str, str | None] | None:
    """(handler, model name, version or None) for the routes served by ``Front``, else None (paths as starlette
    matches them: a path parameter is one non-empty segment). Handler None: a versioned readiness check, answered
    by KServe's app once the version is known to be the served one."""
    parts = scope["path"].split("/")
    method = scope["method"]
    if len(parts) < 4 or parts[0] or parts[2] != "models" or not parts[3]:
        return None
    if parts[1] == "v1" and len(parts) == 4 and method == "POST":
        model, colon, verb = parts[3].rpartition(":")
        return (Front.v1_predict, model, None) if colon and model and verb == "predict" else None
    if parts[1] != "v2":
        return None
    model, rest = parts[3], parts[4:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = rest[1], rest[2:]
    elif rest and rest[0] == "versions":
        return None
    read = method in ("GET", "HEAD")
    if not rest and read:
        return Front.v2_metadata, model, version
    if rest == ["infer"] and method == "POST":
        return Front.v2_infer, model, version
    if rest == ["ready"] and read and version is not None:
        return None, model, version
    return None


def _was_dict(outputs: dict[str, Any], endpoint: Endpoint) -> bool:
    """A dict result (one output per key) rather than the model's own single output."""
    return bool(endpoint.outputs) and next(iter(outputs)) not in endpoint.outputs
