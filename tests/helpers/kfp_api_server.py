"""A small KFP v2beta1 API server for tests: every request is checked against the real swagger.

It is not a mock of ``kfp.Client``: the real client talks HTTP to it. Each request's method and
path must match an operation in ``tests/schemas/kfp-api-v2beta1.swagger.json``; query parameters
and JSON bodies are validated against the swagger ``definitions`` (converted to JSON Schema
draft 4 with the protojson rules grpc-gateway applies: int64 as strings, enums as names or
numbers, lowerCamelCase aliases, unknown fields rejected). Invalid requests get HTTP 400 with a
``googleRpcStatus`` body naming the problem, and are recorded in ``server.rejected``.
Responses are validated too, so the server cannot drift from the schema.

Implemented: healthz, experiments create/list/get, runs create/get/list/terminate. A created run walks
through ``server.run_states`` (default PENDING -> RUNNING -> SUCCEEDED), one state per GET, with
per-task ``run_details.task_details`` derived from the submitted pipeline spec.

Task details come in two layouts. ``layout="simple"`` (default): one entry per pipeline task with its
``pod_name``. ``layout="argo"``: what KFP's Argo backend reports, one entry per Argo node (workflow,
``root-driver``, ``root``, ``<task>-driver``, ``<task>``) with no ``pod_name`` of its own and Argo's
children node ids in ``child_tasks[].pod_name``; ``pod_name_format`` ``"v1"`` (pod name = node id) or
``"v2"`` (Argo >= 3.4: ``<workflow>-<template>-<hash>``, so node ids are not pod names).
``server.pods(run_id)`` lists the pods such a run would have (name, task, role, labels, annotations)
for :class:`PodLogServer`, which plays the Kubernetes core API's pod log and pod list endpoints.

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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema

from helpers.http_fakes import JsonHandler, LocalServer, status_body

SWAGGER_PATH = Path(
    os.environ.get(
        "NBMAGIC_KFP_SWAGGER",
        Path(os.environ.get("NBMAGIC_SCHEMAS", Path(__file__).resolve().parents[1] / "schemas"))
        / "kfp-api-v2beta1.swagger.json",
    )
)

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
        return {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": list(range(len(names)))}]}
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
                alts = sorted(
                    {
                        c.message[len(repr(c.instance)) :].strip()
                        if c.message.startswith(repr(c.instance))
                        else c.message
                        for c in err.context
                    }
                )
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


def _recorded(handler: JsonHandler, method: str) -> Recorded:
    """The request ``handler`` holds, as recorded before it is answered (its body, if any, is set later)."""
    parts = urlsplit(handler.path)
    return Recorded(
        method=method,
        path=parts.path,
        query=parse_qs(parts.query, keep_blank_values=True),
        headers={k.lower(): v for k, v in handler.headers.items()},
        body=None,
    )


@dataclass
class _RunRecord:
    body: dict
    states: list[str]
    gets: int = 0
    created_at: str = ""
    workflow: str = ""  # the Argo workflow name (layout="argo")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


class KfpApiServer(LocalServer):
    """A threaded KFP v2beta1 API server on 127.0.0.1 that validates every request.

    Attributes tests use: ``url``, ``requests`` (all :class:`Recorded`), ``rejected``
    (requests answered 4xx/5xx by validation or auth), ``token`` (when set, every request must
    carry ``Authorization: Bearer <token>``), ``multi_user`` (healthz answer), ``run_states``
    (the states a newly created run walks through, one per GET), ``failure_message``;
    ``tls=(certfile, keyfile)`` serves https.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        multi_user: bool = False,
        run_states: list[str] | None = None,
        swagger: Path = SWAGGER_PATH,
        tls: tuple[str, str] | None = None,
        layout: str = "simple",
        pod_name_format: str = "v1",
    ) -> None:
        assert layout in ("simple", "argo") and pod_name_format in ("v1", "v2")
        super().__init__(tls=tls, name="kfp-api-server")
        self.layout, self.pod_name_format = layout, pod_name_format
        self.swagger = Swagger(swagger)
        self.token = token
        self.multi_user = multi_user
        self.run_states = list(run_states or ["PENDING", "RUNNING", "SUCCEEDED"])
        self.failure_message = "step failed: exit code 1"
        self.requests: list[Recorded] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, _RunRecord] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _make_handler(self) -> type[JsonHandler]:
        server = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                server._dispatch(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

        return Handler

    @property
    def rejected(self) -> list[Recorded]:
        return [r for r in self.requests if r.error is not None]

    def calls(self, operation: str) -> list[Recorded]:
        """Recorded requests for one swagger operationId, e.g. ``RunService_CreateRun``."""
        return [r for r in self.requests if r.operation == operation]

    # request handling ------------------------------------------------------------------------
    def _dispatch(self, handler: JsonHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        rec = _recorded(handler, handler.command)
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
        handler._send(status, payload)

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
                problems = self.swagger.errors(
                    {k: v for k, v in spec.items() if k in ("type", "format", "enum")},
                    value if spec.get("type") == "string" else _coerce(value),
                )
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
            if operation == "RunService_TerminateRun":
                record = self.runs.get(path["run_id"])
                if record is None:
                    raise _ApiError(404, _NOT_FOUND, f"run {path['run_id']} not found")
                shown = min(record.gets, len(record.states) - 1)  # the run ends as KFP shows a terminated run
                record.states = record.states[: shown + 1] + ["CANCELED"]
                return 200, {}
            if operation == "RunService_ListRuns":
                return 200, {
                    "runs": [self._view_run(rid, r) for rid, r in self.runs.items()],
                    "total_size": len(self.runs),
                }
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
        exp = {
            "experiment_id": self._new_id("exp"),
            "display_name": name,
            "description": body.get("description", ""),
            "namespace": ns,
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
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
            raise _ApiError(
                400, _INVALID_ARGUMENT, "exactly one of pipeline_spec and pipeline_version_reference is required"
            )
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
                raise _ApiError(400, _INVALID_ARGUMENT, f"parameter {name!r}: {value!r} is not a {inputs[name]}")
        run_id = self._new_id("run")
        record = _RunRecord(
            body=dict(body, run_id=run_id, experiment_id=exp_id or ""),
            states=list(self.run_states),
            created_at=_now(),
            workflow=f"{spec.get('pipelineInfo', {}).get('name', 'pipeline')}-x{len(self.runs):04d}",
        )
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
        run = {
            k: copy.deepcopy(v)
            for k, v in body.items()
            if k
            in ("experiment_id", "display_name", "description", "pipeline_spec", "runtime_config", "service_account")
        }
        run.update(
            run_id=run_id,
            state=state,
            storage_state="AVAILABLE",
            created_at=record.created_at,
            scheduled_at=record.created_at,
            state_history=[
                {"update_time": record.created_at, "state": s}
                for s in record.states[: min(record.gets, len(record.states) - 1) + 1]
            ],
        )
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            run["finished_at"] = _now()
        if state == "FAILED":
            run["error"] = {"code": 2, "message": self.failure_message, "details": []}
        tasks = self._task_details(run_id, _pipeline_spec(body["pipeline_spec"]), state)
        if tasks:
            run["run_details"] = {"pipeline_context_id": "11", "pipeline_run_context_id": "12", "task_details": tasks}
        return run

    def _task_states(self, spec: dict, run_state: str) -> list[tuple[str, str, str]]:
        """(task, component, state) per root DAG task, dependencies first; empty before the run starts."""
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
        return [(name, comp, state) for (name, comp), state in zip(order, states)]

    def _task_details(self, run_id: str, spec: dict, run_state: str) -> list[dict]:
        if self.layout == "argo":
            return self._argo_task_details(run_id, spec, run_state)
        details = []
        for i, (name, comp, state) in enumerate(self._task_states(spec, run_state)):
            task: dict[str, Any] = {
                "run_id": run_id,
                "task_id": f"{run_id}-t{i}",
                "display_name": name,
                "create_time": _now(),
                "state": state,
                "execution_id": str(100 + i),
                "pod_name": f"{name}-pod-{i}",
            }
            self._finish_task(task, spec, comp, state, i)
            details.append(task)
        return details

    def _finish_task(self, task: dict, spec: dict, comp: str, state: str, i: int) -> None:
        if state != "PENDING":
            task["start_time"] = _now()
        if state in ("SUCCEEDED", "FAILED"):
            task["end_time"] = _now()
        if state == "FAILED":
            task["error"] = {"code": 2, "message": self.failure_message, "details": []}
        if state == "SUCCEEDED":
            arts = spec.get("components", {}).get(comp, {}).get("outputDefinitions", {}).get("artifacts", {})
            task["outputs"] = {out: {"artifact_ids": [str(1000 + 10 * i + j)]} for j, out in enumerate(sorted(arts))}

    # layout="argo": the Argo nodes of KFP's compiled workflow ------------------------------------
    @staticmethod
    def _node_id(workflow: str, node: str) -> str:
        return f"{workflow}-{zlib.crc32(node.encode()):010d}"

    def _argo_nodes(self, run_id: str, spec: dict) -> list[dict]:
        """Every Argo node of the run: name, display name, node id, pod template, children (node names)."""
        wf = self.runs[run_id].workflow
        tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
        downstream: dict[str, list[str]] = {t: [] for t in tasks}
        for t, body in tasks.items():
            for dep in body.get("dependentTasks", []):
                downstream.setdefault(dep, []).append(t)
        firsts = [t for t, body in tasks.items() if not body.get("dependentTasks")]
        nodes = [
            {"name": wf, "display": wf, "id": wf, "template": None, "children": [f"{wf}.root-driver"]},
            {
                "name": f"{wf}.root-driver",
                "display": "root-driver",
                "template": "system-dag-driver",
                "children": [f"{wf}.root"],
            },
            {
                "name": f"{wf}.root",
                "display": "root",
                "template": None,
                "children": [f"{wf}.root.{t}-driver" for t in firsts],
            },
        ]
        for t in tasks:
            nodes.append(
                {
                    "name": f"{wf}.root.{t}-driver",
                    "display": f"{t}-driver",
                    "template": "system-container-driver",
                    "children": [f"{wf}.root.{t}"],
                    "task": t,
                }
            )
            nodes.append(
                {
                    "name": f"{wf}.root.{t}",
                    "display": t,
                    "template": "system-container-executor",
                    "children": [f"{wf}.root.{d}-driver" for d in downstream.get(t, [])],
                    "task": t,
                }
            )
        for node in nodes:
            node.setdefault("id", self._node_id(wf, node["name"]))
        return nodes

    def _pod_name(self, workflow: str, node: dict) -> str:
        if self.pod_name_format == "v1":
            return node["id"]
        return f"{workflow}-{node['template']}-{node['id'].rsplit('-', 1)[1]}"

    def pods(self, run_id: str) -> list[dict]:
        """The pods of a run as Argo would name, label and annotate them (with ``task`` and ``role``)."""
        record = self.runs[run_id]
        spec = _pipeline_spec(record.body["pipeline_spec"])
        if self.layout == "simple":
            return [
                {
                    "name": f"{name}-pod-{i}",
                    "task": name,
                    "role": "executor",
                    "labels": {"pipeline/runid": run_id},
                    "annotations": {},
                }
                for i, (name, _) in enumerate(_topo_tasks(spec))
            ]
        out = []
        for node in self._argo_nodes(run_id, spec):
            if node["template"] is None:
                continue  # DAG nodes have no pod
            out.append(
                {
                    "name": self._pod_name(record.workflow, node),
                    "task": node.get("task"),
                    "role": "driver" if node["template"].endswith("driver") else "executor",
                    "labels": {"pipeline/runid": run_id, "workflows.argoproj.io/workflow": record.workflow},
                    "annotations": {
                        "workflows.argoproj.io/node-id": node["id"],
                        "workflows.argoproj.io/node-name": node["name"],
                    },
                }
            )
        return out

    def _argo_task_details(self, run_id: str, spec: dict, run_state: str) -> list[dict]:
        states = {t: (comp, state) for t, comp, state in self._task_states(spec, run_state)}
        if not states:
            return []
        overall = "SUCCEEDED" if all(s == "SUCCEEDED" for _, s in states.values()) else run_state
        nodes = self._argo_nodes(run_id, spec)
        ids = {n["name"]: n["id"] for n in nodes}
        details = []
        for i, node in enumerate(sorted(nodes, key=lambda n: n["name"])):  # the backend sorts by node name
            task = node.get("task")
            comp, state = states[task] if task else ("", overall)
            if task and node["display"].endswith("-driver") and state != "PENDING":
                state = "SUCCEEDED"
            detail: dict[str, Any] = {
                "run_id": run_id,
                "task_id": f"{run_id}-n{i}",
                "display_name": node["display"],
                "create_time": _now(),
                "state": state,
            }
            kids = [{"pod_name": ids[c]} for c in node["children"] if c in ids]
            if kids:
                detail["child_tasks"] = kids
            self._finish_task(detail, spec, comp if task and not node["display"].endswith("-driver") else "", state, i)
            details.append(detail)
        return details


class PodLogServer(LocalServer):
    """The Kubernetes core API endpoints nbmagic reads pod logs with, on 127.0.0.1.

    ``GET /api/v1/namespaces/{ns}/pods/{name}/log`` (text; 404 for an unknown pod, 400 for an unknown
    container, as the API server answers) and ``GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v``
    (a PodList). Unknown query parameters are refused with 400. Settings tests use: ``token`` (every
    request must carry ``Authorization: Bearer <token>``), ``forbid_logs`` / ``forbid_list`` (403 as
    RBAC answers, the message naming the user), ``requests`` (method, path, query, headers).
    """

    LOG_QUERY = {
        "container",
        "follow",
        "insecureSkipTLSVerifyBackend",
        "limitBytes",
        "pretty",
        "previous",
        "sinceSeconds",
        "tailLines",
        "timestamps",
    }
    LIST_QUERY = {
        "allowWatchBookmarks",
        "continue",
        "fieldSelector",
        "labelSelector",
        "limit",
        "pretty",
        "resourceVersion",
        "resourceVersionMatch",
        "sendInitialEvents",
        "timeoutSeconds",
        "watch",
    }

    def __init__(self, namespace: str = "kubeflow", *, token: str | None = None, pod_source: Any = None) -> None:
        super().__init__(name="pod-log-server")
        self.namespace = namespace
        self.token = token
        self.forbid_logs = False
        self.forbid_list = False
        self.pods: dict[str, dict] = {}
        self.pod_source = pod_source  # () -> {name: pod}: pods that appear while a run goes on
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    def add_pod(
        self,
        name: str,
        log: str,
        *,
        labels: dict | None = None,
        annotations: dict | None = None,
        containers: tuple[str, ...] = ("wait", "main"),
    ) -> None:
        """A pod whose ``main`` container printed ``log`` (Argo pods also have a ``wait`` container)."""
        self.pods[name] = self.pod(log, labels=labels, annotations=annotations, containers=containers)

    @staticmethod
    def pod(
        log: str,
        *,
        labels: dict | None = None,
        annotations: dict | None = None,
        containers: tuple[str, ...] = ("wait", "main"),
    ) -> dict:
        return {
            "log": log,
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
            "containers": containers,
        }

    def _make_handler(self) -> type[JsonHandler]:
        server = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self._reply(*server._answer(self))

        return Handler

    def log_reads(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/log")]

    def lists(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/pods")]

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, str, bytes]:
        return code, "application/json", json.dumps(status_body(code, reason, message)).encode()

    def _answer(self, handler: JsonHandler) -> tuple[int, str, bytes]:
        parts = urlsplit(handler.path)
        rec = _recorded(handler, "GET")
        with self._lock:
            self.requests.append(rec)
        auth = rec.headers.get("authorization", "")
        if self.token is not None and auth != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        user = f"token {auth.split(' ')[-1]}" if auth else "system:anonymous"
        pods = dict(self.pod_source() if self.pod_source else {}, **self.pods)
        q = {k: v[-1] for k, v in rec.query.items()}
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", parts.path)
        if m:
            unknown = set(q) - self.LOG_QUERY
            if unknown:
                return self._status(400, "BadRequest", f"unknown query parameter {sorted(unknown)[0]}")
            ns, name = m.groups()
            if self.forbid_logs:
                # the real message names the user; here it even carries the token, to prove it is masked
                return self._status(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: User "{user}" cannot get '
                    f'resource "pods/log" in API group "" in the namespace "{ns}"',
                )
            pod = pods.get(name) if ns == self.namespace else None
            if pod is None:
                return self._status(404, "NotFound", f'pods "{name}" not found')
            container = q.get("container")
            if container is None and len(pod["containers"]) > 1:
                return self._status(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(pod['containers'])}]",
                )
            if container is not None and container not in pod["containers"]:
                return self._status(400, "BadRequest", f"container {container} is not valid for pod {name}")
            text = pod["log"] if container in (None, "main") else 'time=... level=info msg="waiting"\n'
            return 200, "text/plain", text.encode()
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", parts.path)
        if m:
            unknown = set(q) - self.LIST_QUERY
            if unknown:
                return self._status(400, "BadRequest", f"unknown query parameter {sorted(unknown)[0]}")
            if self.forbid_list:
                return self._status(
                    403,
                    "Forbidden",
                    f'pods is forbidden: User "{user}" cannot list resource '
                    f'"pods" in API group "" in the namespace "{m.group(1)}"',
                )
            wanted = dict(sel.split("=", 1) for sel in q.get("labelSelector", "").split(",") if "=" in sel)
            items = [
                {
                    "metadata": {
                        "name": name,
                        "namespace": self.namespace,
                        "labels": pod["labels"],
                        "annotations": pod["annotations"],
                    },
                    "spec": {"containers": [{"name": c, "image": "python:3.11"} for c in pod["containers"]]},
                }
                for name, pod in pods.items()
                if m.group(1) == self.namespace and all(pod["labels"].get(k) == v for k, v in wanted.items())
            ]
            return (
                200,
                "application/json",
                json.dumps(
                    {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                ).encode(),
            )
        return self._status(404, "NotFound", "the server could not find the requested resource")


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
        return {
            re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", k).lower() if not k.startswith("@") else k: (
                v if k in ("pipeline_spec", "pipelineSpec", "parameters") else _snake(v)
            )
            for k, v in obj.items()
        }
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
