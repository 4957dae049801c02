"""A local HTTP server playing the Kubernetes API for KServe InferenceServices (serving.kserve.io/v1beta1).

It checks each request's path and method, validates bodies against the CRD's openAPIV3Schema
(``tests/schemas/kserve-inferenceservices-crd.yaml``, or ``$NBMAGIC_SCHEMAS``) with jsonschema, rejects
fields the schema does not declare (the API server would silently prune them), and answers GET with a
Ready status after ``ready_after`` reads. Requests are recorded in ``requests``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from helpers.http_fakes import JsonHandler, LocalServer

SCHEMAS = Path(os.environ.get("NBMAGIC_SCHEMAS", Path(__file__).resolve().parents[1] / "schemas"))
CRD = SCHEMAS / "kserve-inferenceservices-crd.yaml"
_PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices(?:/(?P<name>[^/?]+))?$"
)
_schema_cache: dict[str, Any] = {}


def isvc_schema() -> dict[str, Any]:
    if "schema" not in _schema_cache:
        crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
        _schema_cache["schema"] = version["schema"]["openAPIV3Schema"]
    return _schema_cache["schema"]


OBJECT_META = {
    "name", "generateName", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers", "ownerReferences",
    "managedFields", "selfLink",
}  # fmt: skip


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields in ``value`` that a structural schema does not declare (what Kubernetes would prune)."""
    found: list[str] = []
    if path == ".metadata" and isinstance(value, dict):  # ObjectMeta is a bare object in CRDs: check it by name
        return [f".metadata.{key}" for key in value if key not in OBJECT_META]
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is None and not extra or schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        for key, item in value.items():
            if props is not None and key in props:
                found += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def validate(body: Any) -> str | None:
    """An error message, or None when the InferenceService is acceptable."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if body.get("apiVersion") != "serving.kserve.io/v1beta1" or body.get("kind") != "InferenceService":
        return f"wrong apiVersion/kind: {body.get('apiVersion')}/{body.get('kind')}"
    name = (body.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        return f"metadata.name '{name}' is not a DNS-1035 label"
    errors = sorted(jsonschema.Draft7Validator(isvc_schema()).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        return f"spec invalid at {'.'.join(map(str, e.path))}: {e.message}"
    extra = unknown_fields(body, isvc_schema())
    if extra:
        return f"unknown fields: {', '.join(extra)}"
    return None


class FakeKServeAPI:
    """``with FakeKServeAPI(url=...) as api: api.host`` - the Kubernetes API endpoint for an ApiClient."""

    def __init__(self, url: str = "http://model.example.com", ready_after: int = 2) -> None:
        self.url = url
        self.ready_after = ready_after
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._server = LocalServer(self._handler(), name="fake-kserve-api")

    @property
    def host(self) -> str:
        """The fake Kubernetes API's own address (``url`` is the service URL it reports)."""
        return self._server.url

    def __enter__(self) -> FakeKServeAPI:
        self._server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop()

    def _handler(self) -> type[JsonHandler]:
        api = self

        class Handler(JsonHandler):
            def _route(self, method: str) -> None:
                match = _PATH.match(self.path.split("?")[0])
                body = self._body() if method in ("POST", "PUT") else None
                api.requests.append((method, self.path, copy.deepcopy(body)))
                if not match:
                    return self._status(404, "NotFound", f"no route {method} {self.path}")
                ns, name = match["ns"], match["name"]
                if method == "POST" and name is None:
                    return self._create(ns, body)
                if name is None:
                    return self._status(405, "MethodNotAllowed", f"{method} on the collection")
                key = (ns, name)
                if method == "GET":
                    return self._get(key)
                if method == "PUT":
                    return self._replace(key, body)
                if method == "DELETE":
                    if key not in api.objects:
                        return self._status(404, "NotFound", f'inferenceservices "{name}" not found')
                    del api.objects[key]
                    return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                return self._status(405, "MethodNotAllowed", method)

            def _check(self, ns: str, body: Any) -> bool:
                problem = validate(body)
                if problem is None and body["metadata"].get("namespace", ns) != ns:
                    problem = "metadata.namespace does not match the request path"
                if problem:
                    self._status(422, "Invalid", f"InferenceService is invalid: {problem}")
                    return False
                return True

            def _create(self, ns: str, body: Any) -> None:
                if not self._check(ns, body):
                    return
                key = (ns, body["metadata"]["name"])
                if key in api.objects:
                    return self._status(409, "AlreadyExists", f'inferenceservices "{key[1]}" already exists')
                body["metadata"].update(namespace=ns, resourceVersion="1", generation=1)
                api.objects[key] = body
                api.reads[key] = 0
                self._send(201, body)

            def _replace(self, key: tuple[str, str], body: Any) -> None:
                if key not in api.objects:
                    return self._status(404, "NotFound", f'inferenceservices "{key[1]}" not found')
                if not self._check(key[0], body):
                    return
                current = api.objects[key]["metadata"]["resourceVersion"]
                if body["metadata"].get("resourceVersion") != current:
                    return self._status(409, "Conflict", "the object has been modified (resourceVersion)")
                body["metadata"].update(resourceVersion=str(int(current) + 1))
                api.objects[key] = body
                api.reads[key] = 0
                self._send(200, body)

            def _get(self, key: tuple[str, str]) -> None:
                if key not in api.objects:
                    return self._status(404, "NotFound", f'inferenceservices "{key[1]}" not found')
                api.reads[key] += 1
                obj = dict(api.objects[key])
                ready = api.reads[key] >= api.ready_after
                obj["status"] = {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "False",
                            "reason": "" if ready else "RevisionMissing",
                        }
                    ]
                }
                if ready:
                    obj["status"]["url"] = api.url
                self._send(200, obj)

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._route("PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                self._route("DELETE")

        return Handler
