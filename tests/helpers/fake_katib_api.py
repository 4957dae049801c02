"""A local HTTP server on 127.0.0.1 that plays the Kubernetes API for Katib Experiments.

It checks each request's path, method and body (against katib-v1beta1.swagger.json, made strict:
unknown fields are rejected, plus the checks Katib's admission webhook makes), stores Experiments,
and serves GETs whose status progresses: each GET of an Experiment advances the simulated Katib
by one step (start up to parallelTrialCount trials, finish the running ones) and gives it a new
resourceVersion; a PATCH naming an older resourceVersion is refused with 409, as a real API server does.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from helpers.http_fakes import JsonHandler, LocalServer

SCHEMA = (
    Path(os.environ.get("NBMAGIC_SCHEMAS", Path(__file__).resolve().parents[1] / "schemas"))
    / "katib-v1beta1.swagger.json"
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ALGORITHMS = {
    "random",
    "grid",
    "bayesianoptimization",
    "tpe",
    "multivariate-tpe",
    "cmaes",
    "sobol",
    "hyperband",
    "pbt",
    "enas",
    "darts",
}
COLLECTORS = {"StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None", "Push"}
STAMP = "2026-01-01T00:00:{:02d}Z"

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL.pattern},
        "namespace": {"type": "string", "pattern": DNS_LABEL.pattern},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": "string"},
        "generateName": {"type": "string"},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}


def schema_definitions(schema_path: Path = SCHEMA) -> dict[str, Any]:
    """Katib's definitions, strict (no unknown fields), with the Kubernetes types they refer to filled in."""
    definitions = json.loads(schema_path.read_text())["definitions"]
    for definition in definitions.values():
        if definition.get("type") == "object" and "properties" in definition:
            definition.setdefault("additionalProperties", False)
    definitions["v1.ObjectMeta"] = OBJECT_META
    definitions["v1.ListMeta"] = {"type": "object"}
    definitions["v1.Time"] = {"type": "string"}
    definitions["v1.Container"] = {"type": "object", "required": ["name", "image"]}
    definitions["v1.HTTPGetAction"] = {"type": "object"}
    definitions["v1.unstructured.Unstructured"] = {"type": "object", "required": ["apiVersion", "kind"]}
    return definitions


def validator(definition: str, schema_path: Path = SCHEMA) -> Any:
    """A jsonschema validator for one definition, ``$ref``s resolved within the swagger file."""
    import jsonschema

    root = {"definitions": schema_definitions(schema_path), "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(root)


def schema_errors(obj: Any, definition: str = "v1beta1.Experiment") -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(definition).iter_errors(obj)
    ]


JOB_SCHEMA = SCHEMA.with_name("k8s-batch-v1-job.schema.json")


def job_errors(job: Any) -> list[str]:
    """A batch/v1 Job checked against the Kubernetes client's models (strict: unknown fields are errors)."""
    import jsonschema

    checker = jsonschema.Draft7Validator(json.loads(JOB_SCHEMA.read_text()))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in checker.iter_errors(job)]


def katib_errors(experiment: dict[str, Any]) -> list[str]:
    """The semantic checks Katib's validating webhook makes on a new Experiment."""
    errors: list[str] = []
    if experiment.get("apiVersion") != "kubeflow.org/v1beta1" or experiment.get("kind") != "Experiment":
        errors.append("apiVersion/kind must be kubeflow.org/v1beta1 Experiment")
    spec = experiment.get("spec", {})
    algorithm = spec.get("algorithm", {}).get("algorithmName")
    if algorithm not in ALGORITHMS:
        errors.append(f"spec.algorithm.algorithmName {algorithm!r} is not a Katib algorithm")
    objective = spec.get("objective", {})
    if objective.get("type") not in ("minimize", "maximize"):
        errors.append("spec.objective.type must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        errors.append("spec.objective.objectiveMetricName is required")
    for key in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount"):
        if key in spec and spec[key] <= 0:
            errors.append(f"spec.{key} must be > 0")
    names = []
    for param in spec.get("parameters", []) or []:
        name, kind, space = param.get("name"), param.get("parameterType"), param.get("feasibleSpace", {})
        names.append(name)
        if kind in ("double", "int"):
            try:
                low, high = float(space["min"]), float(space["max"])
                if low > high:
                    errors.append(f"parameter {name}: min > max")
                if "step" in space and float(space["step"]) <= 0:
                    errors.append(f"parameter {name}: step must be > 0")
            except (KeyError, ValueError):
                errors.append(f"parameter {name}: {kind} needs numeric min and max")
            if "list" in space:
                errors.append(f"parameter {name}: {kind} takes min/max, not list")
            if space.get("distribution") not in (None, "uniform", "logUniform", "normal", "logNormal"):
                errors.append(f"parameter {name}: unknown distribution {space.get('distribution')!r}")
        elif kind in ("categorical", "discrete"):
            if not space.get("list"):
                errors.append(f"parameter {name}: {kind} needs a non-empty feasibleSpace.list")
            if kind == "discrete":
                for value in space.get("list", []):
                    try:
                        float(value)
                    except ValueError:
                        errors.append(f"parameter {name}: discrete value {value!r} is not a number")
        else:
            errors.append(f"parameter {name}: parameterType {kind!r} is not double, int, categorical or discrete")
    if not names:
        errors.append("spec.parameters must not be empty")
    if algorithm == "grid":
        for param in spec.get("parameters", []):
            if param.get("parameterType") == "double" and "step" not in param.get("feasibleSpace", {}):
                errors.append(f"parameter {param.get('name')}: grid needs a step for double parameters")
    template = spec.get("trialTemplate", {})
    declared = {p.get("name"): p.get("reference") for p in template.get("trialParameters", [])}
    for name, reference in declared.items():
        if reference not in names:
            errors.append(f"trialParameter {name} references unknown parameter {reference!r}")
    text = json.dumps(template.get("trialSpec", {}))
    used = set(re.findall(r"\$\{trialParameters\.([^}]+)\}", text))
    for name in used - set(declared):
        errors.append(f"trialSpec uses ${{trialParameters.{name}}} which is not declared")
    for name in set(declared) - used:
        errors.append(f"trialParameter {name} is never used in trialSpec")
    trial_spec = template.get("trialSpec", {})
    if trial_spec.get("kind") == "Job":
        errors += [f"trialSpec {e}" for e in job_errors(trial_spec)]
        containers = trial_spec.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        if not containers:
            errors.append("trialSpec Job has no containers")
        primary = template.get("primaryContainerName")
        if primary and primary not in [c.get("name") for c in containers]:
            errors.append(f"primaryContainerName {primary!r} is not a container of the Job")
    kind = spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut")
    if kind not in COLLECTORS:
        errors.append(f"metrics collector kind {kind!r} is unknown")
    stopping = spec.get("earlyStopping")
    if stopping is not None:  # Katib's early stopping: medianstop only, on the StdOut or File collector
        if stopping.get("algorithmName") != "medianstop":
            errors.append(f"earlyStopping.algorithmName {stopping.get('algorithmName')!r} is not medianstop")
        if kind not in ("StdOut", "File"):
            errors.append(f"early stopping needs the StdOut or File metrics collector, not {kind}")
        for setting in stopping.get("algorithmSettings", []) or []:
            if setting.get("name") not in ("min_trials_required", "start_step"):
                errors.append(f"medianstop has no setting {setting.get('name')!r}")
            elif not str(setting.get("value", "")).isdigit() or int(setting["value"]) < 1:
                errors.append(f"medianstop {setting['name']} must be an integer >= 1, not {setting.get('value')!r}")
    return errors


def default_metrics(assignments: dict[str, str], objective: str, index: int) -> dict[str, float] | None:
    """The simulated trial's metrics: the objective is the sum of the numeric parameters."""
    total = 0.0
    for value in assignments.values():
        try:
            total += float(value)
        except ValueError:
            total += len(value)
    return {objective: round(total, 6)}


def bump(obj: dict[str, Any]) -> None:
    """A changed object gets a new ``metadata.resourceVersion`` (what optimistic concurrency checks against)."""
    obj["metadata"]["resourceVersion"] = str(int(obj["metadata"].get("resourceVersion", "0")) + 1)


class FakeKatib:
    """The server's state; ``metrics`` decides each simulated trial's outcome (None -> the trial fails)."""

    def __init__(self, metrics: Callable[[dict[str, str], str, int], dict[str, float] | None] = default_metrics):
        self.metrics = metrics
        self.experiments: dict[tuple[str, str], dict[str, Any]] = {}
        self.trials: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._tick = 0

    # -- simulation -----------------------------------------------------------------------------------
    def _sample(self, spec: dict[str, Any], index: int) -> dict[str, str]:
        values = {}
        fraction = (index * 0.6180339887 + 0.25) % 1
        for param in spec["parameters"]:
            space = param["feasibleSpace"]
            if param["parameterType"] in ("categorical", "discrete"):
                values[param["name"]] = space["list"][index % len(space["list"])]
            else:
                low, high = float(space["min"]), float(space["max"])
                value = low + (high - low) * fraction
                values[param["name"]] = str(int(round(value))) if param["parameterType"] == "int" else repr(value)
        return values

    def advance(self, key: tuple[str, str]) -> None:
        experiment = self.experiments[key]
        spec, status = experiment["spec"], experiment["status"]
        trials = self.trials[key]
        if any(c["type"] in ("Succeeded", "Failed") for c in status["conditions"]):
            return
        self._tick += 1
        bump(experiment)  # the controller updates the status: a new resourceVersion, as on a real API server
        objective = spec["objective"]["objectiveMetricName"]
        for trial in trials:
            if trial["status"]["conditions"][-1]["type"] == "Running":
                index = int(trial["metadata"]["name"].rsplit("-", 1)[1])
                assignments = {a["name"]: a["value"] for a in trial["spec"]["parameterAssignments"]}
                metrics = self.metrics(assignments, objective, index)
                trial["status"]["completionTime"] = STAMP.format(min(self._tick, 59))
                if metrics is None:
                    trial["status"]["conditions"].append(
                        {"type": "Failed", "status": "True", "reason": "TrialFailed", "message": "Job has failed"}
                    )
                else:
                    trial["status"]["observation"] = {
                        "metrics": [
                            {"name": k, "latest": str(v), "min": str(v), "max": str(v)} for k, v in metrics.items()
                        ]
                    }
                    trial["status"]["conditions"].append({"type": "Succeeded", "status": "True"})
                trial["status"]["conditions"][-2]["status"] = "False"
        done = [t for t in trials if t["status"]["conditions"][-1]["type"] != "Running"]
        failed = [t for t in done if t["status"]["conditions"][-1]["type"] == "Failed"]
        succeeded = [t for t in done if t["status"]["conditions"][-1]["type"] == "Succeeded"]
        if failed and len(failed) >= spec.get("maxFailedTrialCount", 10**9):
            status["conditions"].append(
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "ExperimentMaxFailedTrialsReached",
                    "message": "Experiment has failed because max failed count has reached",
                }
            )
        elif len(trials) >= spec.get("maxTrialCount", 1) and len(done) == len(trials):
            status["conditions"].append(
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "ExperimentMaxTrialsReached",
                    "message": "Experiment has succeeded because max trial count has reached",
                }
            )
        else:
            room = min(spec.get("parallelTrialCount", 3), spec.get("maxTrialCount", 1) - len(trials))
            for _ in range(max(0, room)):
                trials.append(self._new_trial(experiment, len(trials)))
        status["trials"] = len(trials)
        status["trialsSucceeded"], status["trialsFailed"] = len(succeeded), len(failed)
        status["trialsRunning"] = len(trials) - len(done)
        status["succeededTrialList"] = [t["metadata"]["name"] for t in succeeded]
        status["failedTrialList"] = [t["metadata"]["name"] for t in failed]
        if succeeded:
            sign = 1 if spec["objective"]["type"] == "minimize" else -1

            def value(t: dict[str, Any]) -> float:
                found = {m["name"]: float(m["latest"]) for m in t["status"]["observation"]["metrics"]}
                return sign * found.get(objective, float("inf"))

            best = min(succeeded, key=value)
            status["currentOptimalTrial"] = {
                "bestTrialName": best["metadata"]["name"],
                "parameterAssignments": best["spec"]["parameterAssignments"],
                "observation": best["status"]["observation"],
            }

    def _new_trial(self, experiment: dict[str, Any], index: int) -> dict[str, Any]:
        meta = experiment["metadata"]
        assignments = self._sample(experiment["spec"], index)
        return {
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Trial",
            "metadata": {
                "name": f"{meta['name']}-{index:04d}",
                "namespace": meta["namespace"],
                "labels": {"katib.kubeflow.org/experiment": meta["name"]},
                "creationTimestamp": STAMP.format(min(index, 59)),
            },
            "spec": {
                "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
                "objective": experiment["spec"]["objective"],
            },
            "status": {
                "startTime": STAMP.format(min(self._tick, 59)),
                "conditions": [{"type": "Created", "status": "False"}, {"type": "Running", "status": "True"}],
            },
        }


class _Handler(JsonHandler):
    state: FakeKatib

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        self.state.requests.append((method, url.path))
        parts = url.path.strip("/").split("/")
        with self.state.lock:
            if parts[:3] == ["apis", "kubeflow.org", "v1beta1"] and len(parts) >= 6 and parts[3] == "namespaces":
                namespace, plural, name = parts[4], parts[5], (parts[6] if len(parts) > 6 else None)
                return self._katib(method, namespace, plural, name, parse_qs(url.query))
            if parts[:2] == ["api", "v1"] and len(parts) == 5 and parts[4] == "configmaps" and method == "POST":
                body = self._body()
                meta = body.get("metadata", {}) if isinstance(body, dict) else {}
                if (
                    body.get("kind") != "ConfigMap"
                    or meta.get("namespace", parts[3]) != parts[3]
                    or not DNS_LABEL.match(meta.get("name", ""))
                ):
                    return self._status(422, "Invalid", "not a ConfigMap for this namespace")
                key = (parts[3], meta["name"])
                if key in self.state.configmaps:
                    return self._status(409, "AlreadyExists", f'configmaps "{meta["name"]}" already exists')
                self.state.configmaps[key] = body
                return self._send(201, body)
        self._status(404, "NotFound", f"no route for {method} {url.path}")

    def _katib(self, method: str, namespace: str, plural: str, name: str | None, query: dict) -> None:
        state = self.state
        if plural == "experiments" and method == "POST" and name is None:
            body = self._body()
            problems = schema_errors(body) + katib_errors(body)
            if body.get("metadata", {}).get("namespace", namespace) != namespace:
                problems.append("metadata.namespace does not match the URL")
            if problems:
                return self._status(422, "Invalid", "; ".join(problems))
            key = (namespace, body["metadata"]["name"])
            if key in state.experiments:
                return self._status(409, "AlreadyExists", f'experiments.kubeflow.org "{key[1]}" already exists')
            stored = copy.deepcopy(body)
            stored["metadata"].update(uid=f"uid-{len(state.experiments)}", creationTimestamp=STAMP.format(0))
            stored["status"] = {"conditions": [{"type": "Created", "status": "True"}]}
            bump(stored)
            state.experiments[key], state.trials[key] = stored, []
            return self._send(201, stored)
        if plural == "experiments" and name:
            key = (namespace, name)
            if key not in state.experiments:
                return self._status(404, "NotFound", f'experiments.kubeflow.org "{name}" not found')
            if method == "GET":
                state.advance(key)
                return self._send(200, state.experiments[key])
            if method == "PATCH":
                if "merge-patch" not in self.headers.get("Content-Type", ""):
                    return self._status(415, "UnsupportedMediaType", "use a JSON merge patch")
                patch = self._body()
                allowed = {"maxTrialCount", "parallelTrialCount", "maxFailedTrialCount"}
                meta = patch.get("metadata", {})
                if (
                    not {"spec"} <= set(patch) <= {"spec", "metadata"}
                    or not set(patch["spec"]) <= allowed
                    or not set(meta) <= {"resourceVersion"}
                ):
                    return self._status(422, "Invalid", "only the trial counts of a running Experiment can change")
                current = state.experiments[key]["metadata"]["resourceVersion"]
                if "resourceVersion" in meta and meta["resourceVersion"] != current:
                    return self._status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on experiments.kubeflow.org "{name}": the object has been '
                        "modified; please apply your changes to the latest version and try again",
                    )
                state.experiments[key]["spec"].update(patch["spec"])
                bump(state.experiments[key])
                return self._send(200, state.experiments[key])
            if method == "DELETE":
                del state.experiments[key]
                return self._send(200, {"kind": "Status", "status": "Success"})
        if plural == "trials" and method == "GET" and name is None:
            selector = query.get("labelSelector", [""])[0]
            label, _, value = selector.partition("=")
            items = [
                t
                for (ns, _), trials in state.trials.items()
                if ns == namespace
                for t in trials
                if not selector or t["metadata"]["labels"].get(label) == value
            ]
            return self._send(200, {"apiVersion": "kubeflow.org/v1beta1", "kind": "TrialList", "items": items})
        self._status(405, "MethodNotAllowed", f"{method} {plural}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class FakeKubernetesAPI(LocalServer):
    """``with FakeKubernetesAPI() as api: api.url, api.state``."""

    def __init__(self, state: FakeKatib | None = None) -> None:
        self.state = state or FakeKatib()
        super().__init__(type("Handler", (_Handler,), {"state": self.state}), name="fake-katib-api")
