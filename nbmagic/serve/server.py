"""nbmagic's model server: a ``kserve.Model`` over a serving package, run by ``kserve.ModelServer``.

    python -m nbmagic.serve.server --package DIR --name N --http-port P [--host 127.0.0.1] [--grpc-port G]
        [--predictor-only | --transformer-only --predictor-host HOST:PORT [--predictor-protocol v1|v2]]

By default the transformer runs in this process (preprocess, then predict). ``--predictor-only`` and
``--transformer-only`` give KServe's cluster layout: a transformer server forwarding to a predictor server.
Both V1 (``{"instances": [...]}``) and V2 (open inference protocol) requests are served.

The transformer receives a Python list: V1 ``instances``, or for V2 the single input tensor as a nested
list (bytes decoded to str; several inputs: a dict name -> list). Its result goes to the model's predict.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
_PROTOCOL_HEADER = "x-nbmagic-protocol"


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


# --- request/response conversion (numpy and kserve are imported lazily; the server process has them) ---------


def _request_rows(payload: Any, headers: dict[str, str] | None) -> Any:
    """The request's data as a Python list (V1 instances, or V2 input tensors)."""
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferRequest

    if isinstance(payload, InferRequest):
        if headers is not None:
            headers[_PROTOCOL_HEADER] = "v2"
        if not payload.inputs:
            raise InvalidInput("V2 request has no inputs")
        tensors = {i.name: _tensor_list(i) for i in payload.inputs}
        return next(iter(tensors.values())) if len(tensors) == 1 else tensors
    if isinstance(payload, (bytes, str)):
        import json

        try:
            payload = json.loads(payload)
        except ValueError:
            raise InvalidInput("request body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput('request body must be a JSON object with "instances" (V1) or "inputs" (V2)')
    rows = payload.get("instances", payload.get("inputs"))
    if not isinstance(rows, list):
        raise InvalidInput('V1 request needs "instances": a list, e.g. {"instances": [[1, 2, 3]]}')
    return rows


def _tensor_list(tensor: Any) -> Any:
    array = tensor.as_numpy()
    if array.dtype == object:
        return [
            [_text(v) for v in row] if hasattr(row, "__len__") and not isinstance(row, (bytes, str)) else _text(row)
            for row in array.tolist()
        ]
    return array.tolist()


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _as_array(values: Any) -> Any:
    import numpy as np

    if isinstance(values, dict) or hasattr(values, "to_numpy") or hasattr(values, "shape"):
        return values  # a dict (several inputs) goes to the model as it is
    return np.asarray(values)


def _infer_response(name: str, result: Any, request_id: str | None = None) -> Any:
    import numpy as np
    from kserve.protocol.infer_type import InferOutput, InferResponse

    named = result.items() if isinstance(result, dict) else [("output-0", result)]  # a dict: one output per key
    outputs = []
    for key, value in named:
        array = np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value)
        if array.dtype.kind in "USO":
            array = array.astype(object)
        output = InferOutput(name=str(key), shape=list(array.shape), datatype=_datatype(array))
        output.set_data_from_numpy(array, binary_data=False)
        outputs.append(output)
    return InferResponse(response_id=request_id or "", model_name=name, infer_outputs=outputs)


def _datatype(array: Any) -> str:
    from kserve.utils.numpy_codec import from_np_dtype

    return from_np_dtype(array.dtype) or "BYTES"


def _to_list(result: Any) -> Any:
    if isinstance(result, dict):
        return {key: _to_list(value) for key, value in result.items()}
    if hasattr(result, "to_numpy"):
        result = result.to_numpy()
    return result.tolist() if hasattr(result, "tolist") else result


def _fail(what: str, exc: BaseException) -> Exception:
    from kserve.errors import InvalidInput

    text = str(exc).strip().splitlines()
    return InvalidInput(f"{what} failed: {type(exc).__name__}: {text[0] if text else ''}")


def _model_classes() -> tuple[type, type]:
    """Define the kserve.Model subclasses (kserve is imported only in the server process)."""
    import kserve
    from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse

    from nbmagic.serve import formats
    from nbmagic.serve import transformer as transformer_mod
    from nbmagic.serve.package import open_package

    class PackagedModel(kserve.Model):
        """Preprocess with the packaged transformer (if any), then predict with the packaged model."""

        def __init__(self, name: str, package: Path, with_transformer: bool = True) -> None:
            super().__init__(name)
            self.package = open_package(package)
            self.with_transformer = with_transformer
            self.transform = None
            self.predict_fn = None

        def load(self) -> bool:
            pkg = self.package
            self.predict_fn = formats.load_predict(pkg.model_dir, pkg.manifest["kind"], pkg.manifest["model_file"])
            if self.with_transformer and pkg.transformer_dir is not None:
                self.transform = transformer_mod.load(pkg.transformer_dir)
            self.ready = True
            return True

        def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            rows = _request_rows(payload, headers)
            if self.transform is None:
                return rows
            try:
                return self.transform(rows)
            except Exception as exc:  # noqa: BLE001
                raise _fail(f"transformer '{self.package.manifest['transformer']}'", exc) from None

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            try:
                return self.predict_fn(_as_array(payload))
            except Exception as exc:  # noqa: BLE001
                raise _fail(f"model '{self.name}' predict", exc) from None

        def postprocess(self, result: Any, headers: dict[str, str] | None = None) -> Any:
            if headers is not None and headers.get(_PROTOCOL_HEADER) == "v2":
                return _infer_response(self.name, result)
            return {"predictions": _to_list(result)}

    class ForwardingTransformer(kserve.Model):
        """KServe's transformer layout: preprocess here, predict on the predictor server over HTTP."""

        def __init__(self, name: str, package: Path, protocol: str) -> None:
            super().__init__(name)
            self.package = open_package(package)
            self.protocol = protocol
            self.transform = None

        def load(self) -> bool:
            if self.package.transformer_dir is not None:
                self.transform = transformer_mod.load(self.package.transformer_dir)
            self.ready = True
            return True

        def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            rows = _request_rows(payload, headers)
            if self.transform is not None:
                try:
                    rows = self.transform(rows)
                except Exception as exc:  # noqa: BLE001
                    raise _fail(f"transformer '{self.package.manifest['transformer']}'", exc) from None
            if self.protocol == "v1":
                return {"instances": _to_list(rows)}
            import numpy as np

            array = np.asarray(rows.to_numpy() if hasattr(rows, "to_numpy") else rows)
            tensor = InferInput(name="input-0", shape=list(array.shape), datatype=_datatype(array))
            tensor.set_data_from_numpy(array, binary_data=False)
            return InferRequest(model_name=self.name, infer_inputs=[tensor])

        def postprocess(self, result: Any, headers: dict[str, str] | None = None) -> Any:
            wants_v2 = headers is not None and headers.get(_PROTOCOL_HEADER) == "v2"
            if isinstance(result, InferResponse):
                if wants_v2:
                    return result
                outs = {o.name: o.as_numpy().tolist() for o in result.outputs}
                return {"predictions": next(iter(outs.values())) if len(outs) == 1 else outs}
            return _infer_response(self.name, result["predictions"]) if wants_v2 else result

    return PackagedModel, ForwardingTransformer


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


def _bind_locally(host: str) -> None:
    """KServe hard-codes 0.0.0.0 (REST) and [::] (gRPC); make this process's servers bind ``host``."""
    import grpc
    from kserve import model_server
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest.server import RESTServer

    class LocalRESTServer(RESTServer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host

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


def _quiet(log_requests: bool) -> None:
    import warnings

    # fastapi warns about KServe's ORJSONResponse on every request: one log line (and time) per request
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated")
    level = logging.INFO if log_requests else logging.WARNING
    logging.getLogger("uvicorn.access").setLevel(level)
    logging.getLogger("kserve.trace").setLevel(level)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    die_with_parent(args.parent_pid, args.pdeathsig)
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import time: give it none of ours
    import kserve

    _bind_locally(args.host)
    PackagedModel, ForwardingTransformer = _model_classes()
    if args.transformer_only:
        from kserve.predictor_config import PredictorConfig

        model: Any = ForwardingTransformer(args.name, args.package, args.predictor_protocol)
        config = PredictorConfig(predictor_host=args.predictor_host, predictor_protocol=args.predictor_protocol)
    else:
        model = PackagedModel(args.name, args.package, with_transformer=not args.predictor_only)
        config = None
    model.load()
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port or 8081,
        enable_grpc=args.grpc_port is not None,
        enable_latency_logging=args.log_requests,
        predictor_config=config,
    )
    _quiet(args.log_requests)
    server.start([model])


if __name__ == "__main__":
    main()
