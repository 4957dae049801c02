"""A small KFP v2beta1 API server for tests: every request is checked against the real swagger.

It is not a mock of ``kfp.Client``: the real client talks HTTP to it. Each request's method and
path must match an operation in ``shared/schemas/kfp-api-v2beta1.swagger.json``; query parameters
and JSON bodies are validated against the swagger ``definitions`` (converted to JSON Schema
draft 4 with the protojson rules grpc-gateway applies: int64 as strings, enums as names or
numbers, lowerCamelCase aliases, unknown fields rejected). Invalid requests get HTTP 400 with a
``googleRpcStatus`` body naming the problem, and are recorded in ``server.rejected``.
Responses are validated too, so the server cannot drift from the schema.

Implemented: healthz, experiments create/list/get, runs create/get/list. A created run walks
through ``server.run_states`` (default PENDING -> RUNNING -> SUCCEEDED), one state per GET, with
per-task ``run_details.task_details`` derived from the submitted pipeline spec.

Usage::

    with KfpApiServer(token="t0k") as server:
        client = kfp.Client(host=server.url, existing_token="t0k")
        ...
        assert not server.rejected
"""
from __future__ import annotations

import base64
import copy
import datetime as _dt
import itertools
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

SWAGGER_PATH = Path(os.environ.get(
    "NBMAGIC_KFP_SWAGGER",
    Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kfp-api-v2beta1.swagger.json"))

_DROP_KEYS = {"description", "title", "example", "externalDocs"}
_INT64 = re.compile(r"^-?[0-9]+$")
_NUMBER = re.compile(r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$|^(NaN|-?Infinity)$")

# grpc codes used in googleRpcStatus bodies
_INVALID_ARGUMENT, _NOT_FOUND, _ALREADY_EXISTS, _UNAUTHENTICATED, _UNIMPLEMENTED = 3, 5, 6, 16, 12


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def convert_schema(node: Any) -> Any:
    """One swagger 2.0 schema node -> JSON Schema draft 4 accepting what grpc-gateway's protojson accepts."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return {"$ref": node["$ref"]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key.startswith("x-"):
            continue
        if key == "properties":
            props = {}
            for name, sub in value.items():
                props[name] = convert_schema(sub)
                props.setdefault(_camel(name), props[name])
            out[key] = props
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = convert_schema(value)
        else:
            out[key] = value
    kind, fmt = node.get("type"), node.get("format")
    if kind == "string" and fmt in ("int64", "uint64", "fixed64", "sfixed64", "sint64"):
        return {"anyOf": [{"type": "string", "pattern": _INT64.pattern}, {"type": "integer"}]}
    if kind == "integer":
        return {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": _INT64.pattern}]}
    if kind == "number":
        return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _NUMBER.pattern}]}
    if kind == "string" and "enum" in node:
        names = list(node["enum"])
        return {"anyOf": [{"type": "string", "enum": names},
                          {"type": "integer", "enum": list(range(len(names)))}]}
    if kind == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str) or "T" not in value.upper():
            return False
        parsed = _dt.datetime.fromisoformat(value.replace("z", "Z"))
        return parsed.tzinfo is not None

    @checker.checks("byte", raises=ValueError)
    def _byte(value: object) -> bool:
        if isinstance(value, str):
            base64.b64decode(value + "=" * (-len(value) % 4), validate=False)
        return True

    return checker


class Swagger:
    """The swagger document as routes and draft-4 validators."""

    def __init__(self, path: Path = SWAGGER_PATH) -> None:
        self.doc = json.loads(Path(path).read_text())
        self.definitions = {name: convert_schema(s) for name, s in self.doc["definitions"].items()}
        self._checker = _format_checker()
        self.routes: list[tuple[str, re.Pattern[str], dict]] = []
        for template, ops in self.doc["paths"].items():
            names = re.findall(r"\{([^}]+)\}", template)
            pieces = re.split(r"\{[^}]+\}", template)
            regex = re.compile("^" + "([^/:]+)".join(re.escape(p) for p in pieces) + "$")
            for method, op in ops.items():
                if method == "parameters":
                    continue
                op = dict(op, _path_names=names, _template=template)
                self.routes.append((method.upper(), regex, op))

    def match(self, method: str, path: str) -> tuple[dict | None, dict[str, str], bool]:
        """(operation, path params, path exists for another method)."""
        path_known = False
        for route_method, regex, op in self.routes:
            m = regex.match(path)
            if not m:
                continue
            path_known = True
            if route_method == method:
                return op, dict(zip(op["_path_names"], m.groups())), True
        return None, {}, path_known

    def validator(self, schema: dict) -> jsonschema.Draft4Validator:
        root = dict(convert_schema(schema), definitions=self.definitions)
        return jsonschema.Draft4Validator(root, format_checker=self._checker)

    def errors(self, schema: dict, value: Any) -> list[str]:
        """Schema violations of ``value``, one line each, with the JSON path."""
        found = []
        for err in sorted(self.validator(schema).iter_errors(value), key=lambda e: list(e.path)):
            where = "/".join(str(p) for p in err.absolute_path) or "<root>"
            detail = err.message
            if err.context:  # anyOf: say what each alternative wanted
                alts = sorted({c.message[len(repr(c.instance)):].strip() if c.message.startswith(repr(c.instance))
                               else c.message for c in err.context})
                detail = f"{err.instance!r}: " + " or ".join(alts)
            found.append(f"{where}: {detail}")
        return found

    def response_schema(self, op: dict, status: int) -> dict | None:
        responses = op.get("responses", {})
        spec = responses.get(str(status)) or responses.get("default") or {}
        return spec.get("schema")


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    operation: str | None = None
    status: int = 0
    error: str | None = None


@dataclass
class _RunRecord:
    body: dict
    states: list[str]
    gets: int = 0
    created_at: str = ""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _root_inputs(spec: dict) -> dict[str, str]:
    """Pipeline-level parameter name -> parameterType from an IR pipeline spec."""
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: p.get("parameterType", "") for name, p in params.items()}


_PARAM_CHECKS = {
    "NUMBER_INTEGER": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "NUMBER_DOUBLE": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "STRING": lambda v: isinstance(v, str),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


class KfpApiServer:
    """A threaded KFP v2beta1 API server on 127.0.0.1 that validates every request.

    Attributes tests use: ``url``, ``requests`` (all :class:`Recorded`), ``rejected``
    (requests answered 4xx/5xx by validation or auth), ``token`` (when set, every request must
    carry ``Authorization: Bearer <token>``), ``multi_user`` (healthz answer), ``run_states``
    (the states a newly created run walks through, one per GET), ``failure_message``;
    ``tls=(certfile, keyfile)`` serves https.
    """

    def __init__(self, *, token: str | None = None, multi_user: bool = False,
                 run_states: list[str] | None = None, swagger: Path = SWAGGER_PATH,
                 tls: tuple[str, str] | None = None) -> None:
        self.swagger = Swagger(swagger)
        self.token = token
        self.multi_user = multi_user
        self.run_states = list(run_states or ["PENDING", "RUNNING", "SUCCEEDED"])
        self.failure_message = "step failed: exit code 1"
        self.tls = tls  # (certfile, keyfile): serve https
        self.requests: list[Recorded] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, _RunRecord] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> "KfpApiServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "KfpApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def rejected(self) -> list[Recorded]:
        return [r for r in self.requests if r.error is not None]

    def calls(self, operation: str) -> list[Recorded]:
        """Recorded requests for one swagger operationId, e.g. ``RunService_CreateRun``."""
        return [r for r in self.requests if r.operation == operation]

    # request handling ------------------------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        rec = Recorded(method=handler.command, path=parts.path,
                       query=parse_qs(parts.query, keep_blank_values=True),
                       headers={k.lower(): v for k, v in handler.headers.items()}, body=None)
        with self._lock:
            self.requests.append(rec)
        op = None
        try:
            op, path_params, path_known = self.swagger.match(handler.command, parts.path)
            if op is None:
                if path_known:
                    raise _ApiError(405, _UNIMPLEMENTED, f"method {handler.command} not allowed on {parts.path}")
                raise _ApiError(404, _NOT_FOUND, f"no operation in the v2beta1 swagger for {parts.path}")
            rec.operation = op["operationId"]
            self._check_auth(rec)
            body = self._check_params(op, rec, raw)
            status, payload = self._operate(op["operationId"], path_params, rec.query, body)
            problems = self.swagger.errors(self.swagger.response_schema(op, status) or {}, payload)
            if problems:  # a bug in this server, not in the client
                raise _ApiError(500, 13, "server response violates swagger: " + "; ".join(problems))
        except _ApiError as err:
            rec.error = err.message
            status, payload = err.status, {"code": err.code, "message": err.message, "details": []}
        rec.status = status
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _check_auth(self, rec: Recorded) -> None:
        if self.token is None:
            return
        if rec.headers.get("authorization") != f"Bearer {self.token}":
            raise _ApiError(401, _UNAUTHENTICATED, "missing or wrong bearer token in Authorization header")

    def _check_params(self, op: dict, rec: Recorded, raw: bytes) -> Any:
        params = op.get("parameters", [])
        known_query = {p["name"]: p for p in params if p["in"] == "query"}
        for name, values in rec.query.items():
            spec = known_query.get(name)
            if spec is None:
                raise _ApiError(400, _INVALID_ARGUMENT, f"unknown query parameter {name!r} for {op['operationId']}")
            for value in values:
                problems = self.swagger.errors({k: v for k, v in spec.items() if k in ("type", "format", "enum")},
                                               value if spec.get("type") == "string" else _coerce(value))
                if problems:
                    raise _ApiError(400, _INVALID_ARGUMENT, f"query parameter {name!r}: {problems[0]}")
        for spec in params:
            if spec["in"] == "query" and spec.get("required") and spec["name"] not in rec.query:
                raise _ApiError(400, _INVALID_ARGUMENT, f"missing required query parameter {spec['name']!r}")
        body_spec = next((p for p in params if p["in"] == "body"), None)
        if body_spec is None:
            if raw.strip():
                raise _ApiError(400, _INVALID_ARGUMENT, f"{op['operationId']} takes no request body")
            return None
        ctype = rec.headers.get("content-type", "")
        if "application/json" not in ctype:
            raise _ApiError(400, _INVALID_ARGUMENT, f"expected a JSON body, got Content-Type {ctype!r}")
        try:
            body = json.loads(raw or b"null")
        except ValueError as err:
            raise _ApiError(400, _INVALID_ARGUMENT, f"request body is not JSON: {err}") from None
        rec.body = body
        if body is None and body_spec.get("required"):
            raise _ApiError(400, _INVALID_ARGUMENT, f"{op['operationId']}: missing request body")
        problems = self.swagger.errors(body_spec.get("schema", {}), body)
        if problems:
            raise _ApiError(400, _INVALID_ARGUMENT, f"{op['operationId']} body: " + "; ".join(problems[:5]))
        return body

    # operations ------------------------------------------------------------------------------
    def _operate(self, operation: str, path: dict, query: dict, body: Any) -> tuple[int, Any]:
        q = {k: v[-1] for k, v in query.items()}
        with self._lock:
            if operation == "HealthzService_GetHealthz":
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            if operation == "ExperimentService_CreateExperiment":
                return 200, self._create_experiment(body)
            if operation == "ExperimentService_ListExperiments":
                return 200, self._list_experiments(q)
            if operation == "ExperimentService_GetExperiment":
                exp = self.experiments.get(path["experiment_id"])
                if exp is None:
                    raise _ApiError(404, _NOT_FOUND, f"experiment {path['experiment_id']} not found")
                return 200, exp
            if operation == "RunService_CreateRun":
                return 200, self._create_run(body, q)
            if operation == "RunService_GetRun":
                return 200, self._get_run(path["run_id"])
            if operation == "RunService_ListRuns":
                return 200, {"runs": [self._view_run(rid, r) for rid, r in self.runs.items()],
                             "total_size": len(self.runs)}
        raise _ApiError(501, _UNIMPLEMENTED, f"{operation} is valid but not implemented by this test server")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):04d}-5c1e"

    def _create_experiment(self, body: dict) -> dict:
        body = _snake(body)
        name = body.get("display_name", "")
        if not name.strip():
            raise _ApiError(400, _INVALID_ARGUMENT, "experiment display_name is required")
        ns = body.get("namespace", "")
        if self.multi_user and not ns:
            raise _ApiError(400, _INVALID_ARGUMENT, "multi-user mode: experiment namespace is required")
        if any(e["display_name"] == name and e.get("namespace", "") == ns for e in self.experiments.values()):
            raise _ApiError(409, _ALREADY_EXISTS, f"experiment {name!r} already exists")
        exp = {"experiment_id": self._new_id("exp"), "display_name": name,
               "description": body.get("description", ""), "namespace": ns,
               "created_at": _now(), "storage_state": "AVAILABLE"}
        self.experiments[exp["experiment_id"]] = exp
        return exp

    def _list_experiments(self, q: dict) -> dict:
        found = list(self.experiments.values())
        if self.multi_user and not q.get("namespace"):
            raise _ApiError(400, _INVALID_ARGUMENT, "multi-user mode: namespace is required to list experiments")
        if q.get("namespace"):
            found = [e for e in found if e["namespace"] == q["namespace"]]
        if q.get("filter"):
            try:
                flt = json.loads(q["filter"])
            except ValueError:
                raise _ApiError(400, _INVALID_ARGUMENT, "filter is not JSON") from None
            problems = self.swagger.errors({"$ref": "#/definitions/v2beta1Filter"}, flt)
            if problems:
                raise _ApiError(400, _INVALID_ARGUMENT, "filter: " + "; ".join(problems))
            for pred in _snake(flt).get("predicates", []):
                if pred.get("operation") not in ("EQUALS", 1):
                    raise _ApiError(501, _UNIMPLEMENTED, "test server filters only with EQUALS")
                key, value = pred.get("key"), pred.get("string_value")
                found = [e for e in found if str(e.get(key)) == value]
        return {"experiments": found, "total_size": len(found)} if found else {"total_size": 0}

    def _create_run(self, body: dict, q: dict) -> dict:
        body = _snake(body)
        if not body.get("display_name", "").strip():
            raise _ApiError(400, _INVALID_ARGUMENT, "run display_name is required")
        exp_id = body.get("experiment_id") or q.get("experiment_id")
        if exp_id and exp_id not in self.experiments:
            raise _ApiError(404, _NOT_FOUND, f"experiment {exp_id} not found")
        has_spec, has_ref = "pipeline_spec" in body, "pipeline_version_reference" in body
        if has_spec == has_ref:
            raise _ApiError(400, _INVALID_ARGUMENT, "exactly one of pipeline_spec and pipeline_version_reference is required")
        if has_ref:
            raise _ApiError(501, _UNIMPLEMENTED, "test server runs only inline pipeline_spec")
        spec = _pipeline_spec(body["pipeline_spec"])
        params = body.get("runtime_config", {}).get("parameters", {})
        inputs = _root_inputs(spec)
        for name, value in params.items():
            if name not in inputs:
                raise _ApiError(400, _INVALID_ARGUMENT, f"parameter {name!r} is not an input of the pipeline")
            check = _PARAM_CHECKS.get(inputs[name])
            if check and not check(value):
                raise _ApiError(400, _INVALID_ARGUMENT,
                                f"parameter {name!r}: {value!r} is not a {inputs[name]}")
        run_id = self._new_id("run")
        record = _RunRecord(body=dict(body, run_id=run_id, experiment_id=exp_id or ""),
                            states=list(self.run_states), created_at=_now())
        self.runs[run_id] = record
        return self._view_run(run_id, record)

    def _get_run(self, run_id: str) -> dict:
        record = self.runs.get(run_id)
        if record is None:
            raise _ApiError(404, _NOT_FOUND, f"run {run_id} not found")
        record.gets += 1
        return self._view_run(run_id, record)

    def _view_run(self, run_id: str, record: _RunRecord) -> dict:
        state = record.states[min(record.gets, len(record.states) - 1)]
        body = record.body
        run = {k: copy.deepcopy(v) for k, v in body.items()
               if k in ("experiment_id", "display_name", "description", "pipeline_spec",
                        "runtime_config", "service_account")}
        run.update(run_id=run_id, state=state, storage_state="AVAILABLE",
                   created_at=record.created_at, scheduled_at=record.created_at,
                   state_history=[{"update_time": record.created_at, "state": s}
                                  for s in record.states[:min(record.gets, len(record.states) - 1) + 1]])
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            run["finished_at"] = _now()
        if state == "FAILED":
            run["error"] = {"code": 2, "message": self.failure_message, "details": []}
        tasks = self._task_details(run_id, _pipeline_spec(body["pipeline_spec"]), state)
        if tasks:
            run["run_details"] = {"pipeline_context_id": "11", "pipeline_run_context_id": "12",
                                  "task_details": tasks}
        return run

    def _task_details(self, run_id: str, spec: dict, run_state: str) -> list[dict]:
        order = _topo_tasks(spec)
        if run_state in ("PENDING", "RUNTIME_STATE_UNSPECIFIED") or not order:
            return []
        n = len(order)
        if run_state == "RUNNING":
            done = n // 2
            states = ["SUCCEEDED"] * done + ["RUNNING"] + ["PENDING"] * (n - done - 1)
        elif run_state == "FAILED":
            states = ["SUCCEEDED"] * (n - 1) + ["FAILED"]
        else:
            states = [run_state] * n
        details = []
        for i, ((name, comp), state) in enumerate(zip(order, states)):
            task: dict[str, Any] = {"run_id": run_id, "task_id": f"{run_id}-t{i}", "display_name": name,
                                    "create_time": _now(), "state": state, "execution_id": str(100 + i),
                                    "pod_name": f"{name}-pod-{i}"}
            if state != "PENDING":
                task["start_time"] = _now()
            if state in ("SUCCEEDED", "FAILED"):
                task["end_time"] = _now()
            if state == "FAILED":
                task["error"] = {"code": 2, "message": self.failure_message, "details": []}
            if state == "SUCCEEDED":
                arts = spec.get("components", {}).get(comp, {}).get("outputDefinitions", {}).get("artifacts", {})
                task["outputs"] = {out: {"artifact_ids": [str(1000 + 10 * i + j)]}
                                   for j, out in enumerate(sorted(arts))}
            details.append(task)
        return details


def _coerce(value: str) -> Any:
    """A query string value as protojson would read a number or bool."""
    if _INT64.match(value):
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def _snake(obj: Any) -> Any:
    """Normalise lowerCamelCase JSON names (protojson accepts both) to proto field names."""
    if isinstance(obj, dict):
        return {re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", k).lower() if not k.startswith("@") else k:
                (v if k in ("pipeline_spec", "pipelineSpec", "parameters") else _snake(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_snake(v) for v in obj]
    return obj


def _pipeline_spec(value: dict) -> dict:
    """Check the inline spec parses as a KFP PipelineSpec (as the real server's protojson does)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = value.get("pipeline_spec", value) if "platform_spec" in value else value
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
        if "platform_spec" in value:
            json_format.ParseDict(value["platform_spec"], pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as err:
        raise _ApiError(400, _INVALID_ARGUMENT, f"pipeline_spec is not a valid PipelineSpec: {err}") from None
    return spec


def _topo_tasks(spec: dict) -> list[tuple[str, str]]:
    """Root DAG tasks as (name, component name), dependencies first."""
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for dep in tasks[name].get("dependentTasks", []):
            if dep in tasks:
                visit(dep)
        order.append((name, tasks[name].get("componentRef", {}).get("name", "")))

    for name in sorted(tasks):
        visit(name)
    return order
