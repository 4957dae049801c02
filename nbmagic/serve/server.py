"""nbmagic's model server: a ``kserve.Model`` over a serving package, run by ``kserve.ModelServer``.

    python -m nbmagic.serve.server --package DIR --name N --http-port P [--host 127.0.0.1] [--grpc-port G]
        [--predictor-only | --transformer-only --predictor-host HOST:PORT [--predictor-protocol v1|v2]]

By default the transformer runs in this process (preprocess, then predict). ``--predictor-only`` and
``--transformer-only`` give KServe's cluster layout: a transformer server forwarding to a predictor server.
Both V1 (``{"instances": [...]}``) and V2 (open inference protocol) requests are served.

The transformer receives V1 ``instances`` as the JSON list, or for V2 the input tensor as a numpy array of
its declared dtype (BYTES as str; several inputs: a dict name -> array). Its result goes to the model's outputs
(see endpoint.py); inference over HTTP runs through the lean routes of routes.py, in front of KServe's app.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nbmagic.serve.server", description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, type=Path, help="serving package directory")
    # KServe appends --model_name/--predictor_host/--http_port to transformer containers: accept both spellings.
    parser.add_argument("--name", "--model_name", dest="name", required=True, help="model name in URLs")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=None, help="serve gRPC on this port (off by default)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--predictor-only", action="store_true", help="serve the model without the transformer")
    mode.add_argument("--transformer-only", action="store_true", help="serve the transformer, forward to a predictor")
    parser.add_argument(
        "--predictor-host",
        "--predictor_host",
        dest="predictor_host",
        default=None,
        help="HOST:PORT of the predictor (--transformer-only)",
    )
    parser.add_argument(
        "--predictor-protocol", "--predictor_protocol", dest="predictor_protocol", default="v1", choices=["v1", "v2"]
    )
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    parser.add_argument(
        "--pdeathsig",
        action="store_true",
        help="also use PR_SET_PDEATHSIG (only when started from the parent's main thread: "
        "the signal fires when the starting *thread* ends)",
    )
    parser.add_argument("--log-requests", action="store_true", help="log one line per request (slower)")
    args, _unknown = parser.parse_known_args(argv)  # other KServe-injected flags are ignored
    if args.transformer_only and not args.predictor_host:
        parser.error("--transformer-only needs --predictor-host")
    return args


# --- the kserve.Model (KServe's own routes and gRPC; HTTP inference goes through routes.py) --------------------


def _model_class() -> type:
    """Define the kserve.Model subclass (kserve is imported only in the server process)."""
    import asyncio

    from kserve.errors import InferenceError, InvalidInput
    from kserve.model import Model
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    from nbmagic.serve.endpoint import Endpoint
    from nbmagic.serve.protocol import ProtocolError, as_array, datatype
    from nbmagic.serve.routes import PredictorError

    class PackagedModel(Model):
        """The package's endpoint as a kserve.Model: preprocess, predict (here or forwarded), V1/V2 answers."""

        def __init__(self, endpoint: Endpoint, forward: Any = None) -> None:
            super().__init__(endpoint.name)
            self.endpoint = endpoint
            self.forward = forward
            self.ready = True

        def get_input_types(self) -> list[dict[str, Any]]:
            return self.endpoint.inputs_meta

        def get_output_types(self) -> list[dict[str, Any]]:
            return self.endpoint.outputs_meta

        async def __call__(self, body: Any, headers: dict[str, str] | None = None, verb: Any = None) -> Any:
            try:
                if isinstance(body, InferRequest):
                    inputs = {i.name: i.as_numpy() for i in body.inputs}
                    data = next(iter(inputs.values())) if len(inputs) == 1 else inputs
                    requested = [o.name for o in body.request_outputs or []] or None
                    outputs = await self._predict(self.endpoint.preprocess(data), requested)
                    tensors = []
                    for key, value in outputs.items():
                        array = as_array(value)
                        out = InferOutput(name=key, shape=list(array.shape), datatype=datatype(array))
                        out.set_data_from_numpy(array, binary_data=body.from_grpc)
                        tensors.append(out)
                    response = InferResponse(
                        response_id=body.id or "", model_name=self.name, infer_outputs=tensors, from_grpc=body.from_grpc
                    )
                    return response, {}
                rows = body.get("instances") if isinstance(body, dict) else None
                if not isinstance(rows, list):
                    raise ProtocolError('V1 request needs "instances": a list, e.g. {"instances": [[1, 2, 3]]}')
                outputs = await self._predict(self.endpoint.preprocess(rows), None)
                result = next(iter(outputs.values())) if len(outputs) == 1 else outputs
                return {"predictions": _plain(result)}, {}
            except PredictorError as exc:
                raise InferenceError(str(exc)) from None
            except ProtocolError as exc:
                raise InvalidInput(str(exc)) from None

        async def _predict(self, features: Any, requested: list[str] | None) -> dict[str, Any]:
            if self.forward is not None:
                return await self.forward(features, requested)
            return await asyncio.to_thread(self.endpoint.predict, features, requested)

    return PackagedModel


def _plain(result: Any) -> Any:
    from nbmagic.serve.protocol import as_array

    if isinstance(result, dict):
        return {k: _plain(v) for k, v in result.items()}
    return as_array(result).tolist()


# --- process plumbing ------------------------------------------------------------------------------------------


def die_with_parent(parent_pid: int | None, pdeathsig: bool = True) -> None:
    """Exit when the parent (the kernel) dies: PR_SET_PDEATHSIG on Linux, plus a watchdog thread everywhere."""
    if not parent_pid:
        return
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="nbmagic-parent-watchdog", daemon=True).start()


def _install(
    host: str, front: Callable[[Any], Any], log_requests: bool, on_ready: Callable[[], None] | None = None
) -> None:
    """Shape KServe's REST server for this process: bind ``host`` (KServe hard-codes 0.0.0.0 and [::]), serve
    KServe's app behind ``front(app)`` (the lean inference routes), answer request-schema errors (FastAPI's 422)
    as 400 ``{"error": ...}``, keep KServe's per-request timing middleware only when requests are logged, and
    call ``on_ready`` once uvicorn listens."""
    import grpc
    from kserve import model_server
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest.server import RESTServer

    class LocalRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host
            if on_ready is not None:
                uvicorn_server = self._server
                startup = uvicorn_server.startup

                async def started(sockets: Any = None) -> None:
                    await startup(sockets=sockets)
                    if uvicorn_server.started:
                        on_ready()

                uvicorn_server.startup = started

        def _add_middlewares(self, app: Any) -> None:
            pass  # KServe's timing middleware goes around the front instead (below), when requests are logged

        def create_application(self) -> None:
            if _PREBUILT is None or _PREBUILT.dataplane is not self.dataplane:  # else: routes already on the app
                super().create_application()
            app = front(model_server.app)
            if log_requests:  # time every request, the front's too (named after KServe's matching routes)
                from kserve.protocol.rest.server import PrintTimings, StarletteScopeToName, TimingMiddleware

                namer = StarletteScopeToName(prefix="kserve.io", starlette_app=model_server.app)
                app = TimingMiddleware(app, client=PrintTimings(), metric_namer=namer)
            self.config.app = app

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            _add_protocol_handlers(app)

    class LocalAio:
        def __getattr__(self, attr: str) -> Any:
            return getattr(grpc.aio, attr)

        @staticmethod
        def server(*args: Any, **kwargs: Any) -> Any:
            srv = grpc.aio.server(*args, **kwargs)
            add = srv.add_insecure_port
            srv.add_insecure_port = lambda address: add(address.replace("[::]", host, 1))
            return srv

    model_server.RESTServer = LocalRESTServer
    grpc_server.aio = LocalAio()


def _add_protocol_handlers(app: Any) -> None:
    """Answer FastAPI's own errors (request schema, unknown path, wrong method) with ``{"error": ...}``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)


async def _http_error(_request: Any, exc: Any) -> Any:
    """Starlette's HTTP errors (404 ``{"detail": "Not Found"}``, 405 ...) with the protocol's error body."""
    from nbmagic.serve.routes import error

    response = error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _invalid_request(_request: Any, exc: Any) -> Any:
    """FastAPI's request-schema errors (422 ``{"detail": ...}``) as the protocol's 400 ``{"error": ...}``."""
    from nbmagic.serve.routes import error

    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in exc.errors()
    )
    return error(400, f"invalid request: {problems}")


#: a ModelServer whose app already has KServe's routes, made by ``prebuild`` in the warm process before it forks
_PREBUILT: Any = None


def prebuild() -> None:
    """Make a ModelServer and put KServe's routes and exception handlers on its app ahead of a fork. None of it
    depends on the model (the routes look models up per request; OpenAI and time-series routes are added only
    for models of those kinds, which a package never is), so each forked server only registers its model and
    saves the ~40 ms of FastAPI route building. Call with ``sys.argv`` holding no server options."""
    global _PREBUILT
    from nbmagic.serve import kserve_lean

    kserve_lean.load()
    from kserve import model_server
    from kserve.protocol.rest.server import RESTServer

    server = model_server.ModelServer(enable_grpc=False, enable_latency_logging=False)
    rest = RESTServer(
        model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, server.http_port
    )
    rest._register_endpoints(model_server.app)
    rest._add_exception_handlers(model_server.app)
    _add_protocol_handlers(model_server.app)
    _PREBUILT = server


def _quiet(log_requests: bool) -> None:
    import warnings

    # fastapi warns about KServe's ORJSONResponse on every request: one log line (and time) per request
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated")
    level = logging.INFO if log_requests else logging.WARNING
    access = logging.getLogger("uvicorn.access")
    access.setLevel(level)
    if not log_requests:  # no handler anywhere: uvicorn then skips building an access line per request
        access.handlers = []
        access.propagate = False
    logging.getLogger("kserve.trace").setLevel(level)


def main(argv: list[str] | None = None, on_ready: Callable[[], None] | None = None) -> None:
    """Serve the package (``on_ready``: called once the HTTP server listens)."""
    args = parse_args(argv)
    die_with_parent(args.parent_pid, args.pdeathsig)
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import time: give it none of ours
    from nbmagic.serve import kserve_lean

    kserve_lean.load()
    from kserve.model_server import ModelServer

    from nbmagic.serve.endpoint import Endpoint
    from nbmagic.serve.routes import Forward, Front

    endpoint = Endpoint(args.package, with_transformer=not args.predictor_only, with_model=not args.transformer_only)
    forward = Forward(args.predictor_host, args.predictor_protocol, args.name) if args.transformer_only else None
    endpoint.name = args.name
    _install(args.host, lambda app: Front(app, endpoint, forward), args.log_requests, on_ready)
    model = _model_class()(endpoint, forward)
    options = {
        "http_port": args.http_port,
        "grpc_port": args.grpc_port or 8081,
        "enable_grpc": args.grpc_port is not None,
        "enable_latency_logging": args.log_requests,
    }
    if _PREBUILT is not None:  # forked from the warm process: its ModelServer, routes already built
        server = _PREBUILT
        for key, value in options.items():
            setattr(server, key, value)
    else:
        server = ModelServer(**options)
    _quiet(args.log_requests)
    _fast_event_loop()
    server.start([model])


def _fast_event_loop() -> None:
    """Run on uvloop where it is installed, as ``uvicorn.run`` would: KServe's single-process ModelServer starts
    its servers with ``asyncio.run``, which otherwise takes the standard library's loop (more Python per
    request)."""
    import asyncio
    import warnings

    try:
        import uvloop
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # policies are deprecated from Python 3.14 on
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe configures get_event_loop()'s before asyncio.run


if __name__ == "__main__":
    main()
