"""How big the Argo Workflow is that Kubeflow Pipelines' backend makes from a compiled pipeline, and grows as it runs.

Built the way KFP v2's Argo compiler and driver build it (``backend/src/v2/compiler/argocompiler``,
``backend/src/v2/driver``), from the IR YAML alone:

- spec: each distinct component spec and container implementation once as a workflow argument (KFP keys both by
  the hash of the container, so components with the same container share them), the root DAG's spec (every
  task again) as one more argument, two DAG tasks per step (a driver carrying the task's spec as JSON, an
  executor), the root DAG driver carrying the run's parameter values, and KFP's fixed templates;
- status, once every step ran: per step a driver pod node (inputs: the component, task and container JSON;
  output: the pod spec patch), an executor DAG node and a pod node (input: the pod spec patch each). The patch
  holds the launcher's command line with the executor input (parameter values, artifact URIs) and the component
  spec, then the step's own command and args with ``{{$}}`` replaced by the executor input again.

Values only the cluster knows (run ids, URIs, timestamps, pod names) are filled with strings of typical length,
and KFP's fixed templates with their main fields; so the totals are estimates, the per-step growth is close.
Argo keeps a Workflow under its size limit by storing ``status.nodes`` gzipped (``compressedNodes``) once the
object grows too large: :attr:`WorkflowSize.stored` is what etcd holds then.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any

ARGO_LIMIT = 1024 * 1024  # Argo's default maximum Workflow size (it compresses status.nodes above it)
_RUN = "0b8f6c2e-4d1a-4f7e-9c3b-2a5d6e7f8a9b"  # a run id: every URI and node name carries one
_NODE = "nbmagic-run-x7k2p"  # the Workflow's generated name
_TIME = "2026-01-01T00:00:00Z"


def _json(value: Any) -> str:
    """Go's ``encoding/json`` of a proto's JSON form, as KFP's ``stablyMarshalJSON`` writes it: keys sorted."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class WorkflowSize:
    """Bytes of the Workflow object as JSON: the submitted spec, and the status its nodes add by the run's end."""

    spec: int
    status: int
    status_compressed: int  # the same nodes as Argo's compressedNodes (gzip, then base64)
    steps: int

    @property
    def least(self) -> int:
        """The least the cluster can store it in: spec, and the node status gzipped."""
        return self.spec + self.status_compressed

    @property
    def stored(self) -> int:
        """What the cluster stores at the run's end: nodes as they are, or compressed when that is over the limit."""
        if self.spec + self.status <= ARGO_LIMIT:
            return self.spec + self.status
        return self.spec + self.status_compressed


def _container_of(spec: dict, component: dict) -> dict | None:
    label = component.get("executorLabel")
    executor = spec.get("deploymentSpec", {}).get("executors", {}).get(label or "", {})
    return executor.get("container")


def _uri(pipeline: str, task: str, name: str) -> str:
    return f"minio://mlpipeline/v2/artifacts/{pipeline}/{_RUN}/{task}/{_RUN[:8]}-{_RUN[9:13]}/{name}"


def _local(uri: str) -> str:
    return "/minio/" + uri.split("://", 1)[1]


def _executor_input(pipeline: str, name: str, task: dict, component: dict, defaults: dict) -> dict:
    """The ExecutorInput KFP's driver resolves for ``task``: parameter values and one artifact per input/output."""
    values: dict[str, Any] = {}
    for key, source in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in source:
            values[key] = defaults.get(source["componentInputParameter"])
        else:
            values[key] = source.get("runtimeValue", {}).get("constant")
    inputs: dict[str, Any] = {}
    for key, source in task.get("inputs", {}).get("artifacts", {}).items():
        producer = source.get("taskOutputArtifact", {})
        uri = _uri(pipeline, producer.get("producerTask", "upstream"), producer.get("outputArtifactKey", key))
        kind = component.get("inputDefinitions", {}).get("artifacts", {}).get(key, {}).get("artifactType", {})
        # what nbmagic's marshaller records on a value (type, format, hash, size)
        metadata = {"type": "builtins.int", "format": "pickle", "hash": "0" * 16, "size": 5}
        inputs[key] = {"artifacts": [{"name": "1234", "type": kind, "uri": uri, "metadata": metadata}]}
    outputs: dict[str, Any] = {}
    for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
        kind = definition.get("artifactType", {})
        outputs[key] = {"artifacts": [{"type": kind, "uri": _uri(pipeline, name, key)}]}
    result: dict[str, Any] = {"inputs": {}, "outputs": {"outputFile": "/tmp/kfp_outputs/output_metadata.json"}}
    if values:
        result["inputs"]["parameterValues"] = values
    if inputs:
        result["inputs"]["artifacts"] = inputs
    if outputs:
        result["outputs"]["artifacts"] = outputs
    return result


def _resolve(part: str, executor_input: dict) -> str:
    """A container command/arg with the placeholders the driver replaces (the executor input, paths, values)."""
    text = part.replace("{{$}}", _json(executor_input))
    if "{{$." not in text:
        return text
    for key, value in executor_input["inputs"].get("parameterValues", {}).items():
        text = text.replace(f"{{{{$.inputs.parameters['{key}']}}}}", str(value))
    for where in ("inputs", "outputs"):
        for key, entry in executor_input[where].get("artifacts", {}).items():
            uri = entry["artifacts"][0]["uri"]
            text = text.replace(f"{{{{$.{where}.artifacts['{key}'].path}}}}", _local(uri))
            text = text.replace(f"{{{{$.{where}.artifacts['{key}'].uri}}}}", uri)
    return text.replace("{{$.outputs.output_file}}", executor_input["outputs"]["outputFile"])


def _pod_spec_patch(pipeline: str, container: dict, component: dict, executor_input: dict) -> str:
    """The strategic merge patch the container driver writes for the step's pod (``initPodSpecPatch``)."""
    launcher = [
        "/kfp-launcher/launch",
        *("--executor_type", "container", "--pipeline_name", pipeline, "--run_id", _RUN, "--execution_id", "12345"),
        *("--executor_input", _json(executor_input), "--component_spec", _json(component)),
        *("--pod_name", "$(KFP_POD_NAME)", "--pod_uid", "$(KFP_POD_UID)"),
        *("--ml_pipeline_server_address", "ml-pipeline.kubeflow", "--ml_pipeline_server_port", "8887"),
        *("--mlmd_server_address", "metadata-grpc-service.kubeflow", "--mlmd_server_port", "8080"),
        *("--publish_logs", "true", "--ml_pipeline_tls_enabled=false", "--metadata_tls_enabled=false"),
        *("--ca_cert_path", "", "--cache_disabled=false", "--log_level", "1", "--"),
    ]
    args = [_resolve(p, executor_input) for p in [*container.get("command", []), *container.get("args", [])]]
    main: dict[str, Any] = {"name": "main", "command": launcher, "args": args, "image": container.get("image", "")}
    if container.get("env"):
        main["env"] = container["env"]
    if container.get("resources"):
        main["resources"] = {"limits": {}, "requests": {}}
    return _json({"containers": [main]})


def _fixed_templates(pipeline: str) -> list[dict]:
    """KFP's templates every run has (drivers, executor, pod template, entry DAG), with their main fields."""
    driver_args = [f"--{flag}" for flag in ("type", "pipeline_name", "run_id", "run_name", "run_display_name")] + [
        pipeline,
        "{{workflow.uid}}",
        "{{workflow.name}}",
        "",
        "{{workflow.creationTimestamp}}",
    ]
    driver_args += [
        f"--{flag}"
        for flag in (
            "dag_execution_id component task task_name container iteration_index cached_decision_path "
            "pod_spec_patch_path condition_path kubernetes_config http_proxy https_proxy no_proxy "
            "ml_pipeline_server_address ml_pipeline_server_port mlmd_server_address mlmd_server_port "
            "cache_disabled=false log_level publish_logs ml_pipeline_tls_enabled=false "
            "metadata_tls_enabled=false ca_cert_path"
        ).split()
    ]
    driver_args += ["{{inputs.parameters." + p + "}}" for p in ("parent-dag-id", "component", "task", "task-name")]
    driver_args += ["{{outputs.parameters." + p + ".path}}" for p in ("cached-decision", "pod-spec-patch", "condition")]
    resources = {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}
    driver_container = {"image": "ghcr.io/kubeflow/kfp-driver:2.5.0", "command": ["driver"], "args": driver_args}
    driver_container["resources"] = resources
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
    scratch = ["kfp-launcher", "gcs-scratch", "s3-scratch", "minio-scratch", "dot-local-scratch", "dot-cache-scratch"]
    scratch.append("dot-config-scratch")
    impl = {
        "name": "system-container-impl",
        "inputs": {"parameters": [{"name": "pod-spec-patch"}]},
        "podSpecPatch": "{{inputs.parameters.pod-spec-patch}}",
        "volumes": [{"name": n, "emptyDir": {}} for n in scratch],
        "initContainers": [
            {
                "name": "kfp-launcher",
                "image": "ghcr.io/kubeflow/kfp-launcher:2.5.0",
                "command": ["launcher-v2"],
                "args": ["--copy", "/kfp-launcher/launch"],
                "volumeMounts": [{"name": "kfp-launcher", "mountPath": "/kfp-launcher"}],
                "resources": resources,
                "securityContext": security,
            }
        ],
        "container": {
            "image": "gcr.io/ml-pipeline/should-be-overridden-during-runtime",
            "command": ["should-be-overridden-during-runtime"],
            "volumeMounts": [{"name": n, "mountPath": "/" + n.replace("-scratch", "")} for n in scratch],
            "env": [{"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {},
            "securityContext": security,
        },
        "metadata": {"labels": {"pipelines.kubeflow.org/v2_component": "true"}},
    }
    executor = {
        "name": "system-container-executor",
        "inputs": {"parameters": [{"name": "pod-spec-patch"}, {"name": "cached-decision", "default": "false"}]},
        "dag": {
            "tasks": [
                {
                    "name": "executor",
                    "template": "system-container-impl",
                    "arguments": {
                        "parameters": [{"name": "pod-spec-patch", "value": "{{inputs.parameters.pod-spec-patch}}"}]
                    },
                    "when": "{{inputs.parameters.cached-decision}} != true",
                }
            ]
        },
    }
    outputs = [
        {"name": p, "valueFrom": {"path": f"/tmp/outputs/{p}", "default": ""}}
        for p in ("pod-spec-patch", "cached-decision", "condition")
    ]
    container_driver = {
        "name": "system-container-driver",
        "inputs": {"parameters": [{"name": p} for p in ("component", "task", "container", "task-name")]},
        "outputs": {"parameters": outputs},
        "container": driver_container,
        "metadata": {"labels": {"pipelines.kubeflow.org/v2_component": "true"}},
    }
    dag_driver = dict(container_driver, name="system-dag-driver")
    entry = {
        "name": "entrypoint",
        "dag": {
            "tasks": [
                {"name": "root-driver", "template": "system-dag-driver"},
                {"name": "root", "template": "root", "depends": "root-driver.Succeeded"},
            ]
        },
    }
    return [container_driver, executor, impl, dag_driver, entry]


def _node(name: str, template: str, kind: str, inputs: list | None = None, outputs: dict | None = None) -> dict:
    node: dict[str, Any] = {
        "id": f"{_NODE}-{int(hashlib.sha256(name.encode()).hexdigest()[:8], 16):010d}",
        "name": f"{_NODE}.root.{name}",
        "displayName": name,
        "type": kind,
        "templateName": template,
        "templateScope": f"local/{_NODE}",
        "phase": "Succeeded",
        "boundaryID": f"{_NODE}-1234567890",
        "startedAt": _TIME,
        "finishedAt": _TIME,
        "progress": "1/1",
        "children": [f"{_NODE}-1234567890"],
    }
    if kind == "Pod":
        node["hostNodeName"] = "worker-node-1"
        node["resourcesDuration"] = {"cpu": 1, "memory": 10}
        logs = {"name": "main-logs", "s3": {"key": f"artifacts/{_NODE}/2026/01/01/{_NODE}-1234567890/main.log"}}
        outputs = dict(outputs or {}, artifacts=[logs], exitCode="0")
    if inputs:
        node["inputs"] = {"parameters": inputs}
    if outputs:
        node["outputs"] = outputs
    return node


def estimate(ir_text: str) -> WorkflowSize:
    """The Argo Workflow's size for the KFP IR YAML ``ir_text`` (see the module's docstring for how)."""
    workflow, nodes = build(ir_text)
    status = _json(nodes).encode()
    return WorkflowSize(
        spec=len(_json(workflow).encode()),
        status=len(status),
        status_compressed=len(base64.b64encode(gzip.compress(status))),
        steps=len(workflow["spec"]["templates"][-1]["dag"]["tasks"]) // 2,
    )


def build(ir_text: str) -> tuple[dict, dict]:
    """The Workflow KFP submits for ``ir_text``, and its ``status.nodes`` once every step ran (node id -> node)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it
    documents = [d for d in yaml.load_all(ir_text, Loader=loader) if d]
    spec = documents[0]
    platform = next((d for d in documents[1:] if "platforms" in d), {})
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    pipeline = spec.get("pipelineInfo", {}).get("name", "pipeline")
    components = spec.get("components", {})
    root = spec["root"]
    defaults = {
        name: p.get("defaultValue") for name, p in root.get("inputDefinitions", {}).get("parameters", {}).items()
    }

    arguments: list[dict] = []
    keys: dict[str, str] = {}
    for name, component in components.items():
        container = _container_of(spec, component)
        key = hashlib.sha256(_json(container).encode()).hexdigest() if container is not None else name
        keys[name] = key
        if not any(a["name"] == f"components-{key}" for a in arguments):
            arguments.append({"name": f"components-{key}", "value": _json(component)})
            if container is not None:
                arguments.append({"name": f"implementations-{key}", "value": _json(container)})
        label = component.get("executorLabel", "")
        if label in k8s:
            arguments.append({"name": f"kubernetes-{name}", "value": _json(k8s[label])})
    arguments.append({"name": "components-root", "value": _json(root)})

    dag_tasks: list[dict] = []
    nodes: dict[str, dict] = {}
    for name, task in root.get("dag", {}).get("tasks", {}).items():
        ref = task["componentRef"]["name"]
        component, key = components[ref], keys[ref]
        container = _container_of(spec, component) or {}
        driver_inputs = [
            {"name": "component", "value": f"{{{{workflow.parameters.components-{key}}}}}"},
            {"name": "task", "value": _json(task)},
            {"name": "container", "value": f"{{{{workflow.parameters.implementations-{key}}}}}"},
            {"name": "task-name", "value": name},
            {"name": "parent-dag-id", "value": "{{inputs.parameters.parent-dag-id}}"},
        ]
        if component.get("executorLabel", "") in k8s:
            driver_inputs.append(
                {"name": "kubernetes-config", "value": f"{{{{workflow.parameters.kubernetes-{ref}}}}}"}
            )
        driver: dict[str, Any] = {
            "name": f"{name}-driver",
            "template": "system-container-driver",
            "arguments": {"parameters": driver_inputs},
        }
        if task.get("dependentTasks"):
            driver["depends"] = " && ".join(f"{d}.Succeeded" for d in task["dependentTasks"])
        executor_args = [
            {"name": "pod-spec-patch", "value": f"{{{{tasks.{name}-driver.outputs.parameters.pod-spec-patch}}}}"},
            {
                "name": "cached-decision",
                "default": "false",
                "value": f"{{{{tasks.{name}-driver.outputs.parameters.cached-decision}}}}",
            },
        ]
        if task.get("retryPolicy"):
            executor_args += [{"name": p, "value": "3"} for p in ("retry-max-count", "retry-backoff-duration")]
        dag_tasks.append(driver)
        dag_tasks.append(
            {
                "name": name,
                "template": "system-container-executor",
                "arguments": {"parameters": executor_args},
                "depends": f"{name}-driver.Succeeded",
            }
        )
        # the run's end: what Argo records for this step's three nodes
        resolved = [
            {"name": "component", "value": _json(component)},
            {"name": "task", "value": _json(task)},
            {"name": "container", "value": _json(container)},
            {"name": "task-name", "value": name},
            {"name": "parent-dag-id", "value": "12345"},
            {"name": "iteration-index", "value": "-1"},
            {
                "name": "kubernetes-config",
                "value": _json(k8s[label]) if (label := component.get("executorLabel")) in k8s else "",
            },
        ]
        executor_input = _executor_input(pipeline, name, task, component, defaults)
        patch = _pod_spec_patch(pipeline, container, component, executor_input)
        produced = [
            {"name": "pod-spec-patch", "value": patch},
            {"name": "cached-decision", "value": "false"},
            {"name": "condition", "value": "true"},
        ]
        for node in (
            _node(f"{name}-driver", "system-container-driver", "Pod", resolved, {"parameters": produced}),
            _node(name, "system-container-executor", "DAG", produced[:2]),
            _node(f"{name}.executor", "system-container-impl", "Pod", produced[:1]),
        ):
            nodes[node["id"]] = node

    root_driver = {
        "name": "root-driver",
        "template": "system-dag-driver",
        "arguments": {
            "parameters": [
                {"name": "component", "value": "{{workflow.parameters.components-root}}"},
                {"name": "runtime-config", "value": _json({"parameterValues": defaults})},
                {"name": "driver-type", "value": "ROOT_DAG"},
            ]
        },
    }
    templates = _fixed_templates(pipeline)
    templates[-1]["dag"]["tasks"][0] = root_driver
    templates.append(
        {"name": "root", "inputs": {"parameters": [{"name": "parent-dag-id"}]}, "dag": {"tasks": dag_tasks}}
    )
    workflow = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{pipeline}-"},
        "spec": {
            "arguments": {"parameters": arguments},
            "entrypoint": "entrypoint",
            "podMetadata": {
                "annotations": {"pipelines.kubeflow.org/v2_component": "true"},
                "labels": {"pipelines.kubeflow.org/v2_component": "true"},
            },
            "serviceAccountName": "pipeline-runner",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "templates": templates,
        },
    }
    return workflow, nodes
