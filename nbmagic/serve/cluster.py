"""A serving package as a KServe v1beta1 InferenceService: build the manifest, submit it, wait for Ready.

Predictor: the built-in runtime for the model's ``modelFormat`` with ``storageUri`` at the package's ``model/``
directory; models with no built-in runtime get a custom predictor container running nbmagic's server.
Transformer: a container running ``python -m nbmagic.serve.server --transformer-only`` on the packaged function
(KServe's storage initializer fetches the package for it from ``STORAGE_URI``; KServe adds ``--model_name`` and
``--predictor_host``). Inside pods the servers bind 0.0.0.0 - pod networking needs it; local servers never do.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any

from nbmagic.images import nbmagic_image
from nbmagic.kube import SERVING_NAMESPACE, api_client
from nbmagic.serve import client
from nbmagic.serve.errors import ServeError
from nbmagic.serve.package import Package, validate_name

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
IMAGE_ENV = "NBMAGIC_SERVE_IMAGE"
MOUNT = "/mnt/models"
_SCHEMES = ("s3://", "gs://", "pvc://", "file://", "https://", "hdfs://", "webhdfs://")


def serve_image() -> str:
    """The image with nbmagic + kserve installed, for transformer and custom predictor containers."""
    return os.environ.get(IMAGE_ENV) or nbmagic_image()


def _server_container(package: Package, storage_uri: str, image: str, extra: list[str]) -> Any:
    from kubernetes import client as k8s

    return k8s.V1Container(
        name="kserve-container",
        image=image,
        command=["python", "-m", "nbmagic.serve.server"],
        args=["--package", MOUNT, "--name", package.name, "--host", "0.0.0.0", "--http-port", "8080", *extra],
        env=[k8s.V1EnvVar(name="STORAGE_URI", value=storage_uri)],
        ports=[k8s.V1ContainerPort(container_port=8080, protocol="TCP")],
    )


def inference_service(
    package: Package,
    *,
    storage_uri: str,
    namespace: str = SERVING_NAMESPACE,
    protocol: str = "v1",
    image: str | None = None,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The InferenceService manifest, built with kserve's typed models and serialized as the Kubernetes API
    takes it (a dict with camelCase keys; a misspelt field is a TypeError here, not a pruned field there)."""
    import kserve
    from kubernetes import client as k8s

    validate_name(package.name)
    validate_name(namespace)
    if not storage_uri.startswith(_SCHEMES):
        raise ServeError(f"--storage-uri {storage_uri} must start with one of {', '.join(_SCHEMES)}")
    if protocol not in ("v1", "v2"):
        raise ServeError(f"--protocol {protocol} is not supported: use v1 or v2")
    image = image or serve_image()
    base = storage_uri.rstrip("/")
    fmt = package.manifest.get("model_format")
    if fmt in ("sklearn", "xgboost", "lightgbm", "tensorflow"):
        predictor = kserve.V1beta1PredictorSpec(
            model=kserve.V1beta1ModelSpec(
                name=None,  # the container name: KServe's default, not an empty string
                model_format=kserve.V1beta1ModelFormat(name=fmt),
                storage_uri=f"{base}/model",
                protocol_version=protocol,
            ),
            service_account_name=service_account,
        )
    else:  # pytorch, predict(), callable: no built-in runtime loads a dill file
        predictor = kserve.V1beta1PredictorSpec(
            containers=[_server_container(package, base, image, ["--predictor-only"])],
            service_account_name=service_account,
        )
    transformer = None
    if package.transformer_dir is not None:
        transformer = kserve.V1beta1TransformerSpec(
            containers=[
                _server_container(package, base, image, ["--transformer-only", "--predictor-protocol", protocol])
            ]
        )
    isvc = kserve.V1beta1InferenceService(
        api_version=f"{GROUP}/{VERSION}",
        kind="InferenceService",
        metadata=k8s.V1ObjectMeta(
            name=package.name,
            namespace=namespace,
            labels={"app.kubernetes.io/managed-by": "nbmagic"},
            annotations={"nbmagic/model-type": package.manifest["type_name"]},
        ),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor, transformer=transformer),
    )
    return k8s.ApiClient().sanitize_for_serialization(isvc)


def submit(manifest: dict[str, Any], api: Any) -> dict[str, Any]:
    """Create the InferenceService, or replace it when one with that name exists."""
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    objects = k8s.CustomObjectsApi(api)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        return objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except ApiException as exc:
        if exc.status != 409:
            raise ServeError(
                f"creating InferenceService '{name}' in '{namespace}' failed: {exc.status} {_api_message(exc)}"
            ) from None
    current = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    body = dict(
        manifest, metadata=dict(manifest["metadata"], resourceVersion=current["metadata"].get("resourceVersion"))
    )
    try:
        return objects.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    except ApiException as exc:
        raise ServeError(
            f"replacing InferenceService '{name}' in '{namespace}' failed: {exc.status} {_api_message(exc)}"
        ) from None


def _api_message(exc: Any) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError):
        return str(exc.reason or "")


def ready_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond
    return None


class ClusterServer:
    """An InferenceService on a cluster: ``url``, ``predict()``, ``status``, ``stop()`` (deletes it)."""

    def __init__(self, package: Package, namespace: str, api: Any, protocol: str = "v1") -> None:
        self.package = package
        self.name = package.name
        self.namespace = namespace
        self.protocol = protocol
        self.api = api
        self.url: str | None = None
        self._session: Any = None

    def _get(self) -> dict[str, Any]:
        from kubernetes import client as k8s

        return k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )

    def wait_ready(self, timeout: float = 600.0, interval: float = 2.0) -> ClusterServer:
        deadline = time.monotonic() + timeout
        last = None
        pause = 0.1
        while time.monotonic() < deadline:
            obj = self._get()
            last = ready_condition(obj)
            if last and last.get("status") == "True":
                self.url = (obj.get("status") or {}).get("url")
                return self
            time.sleep(pause)
            pause = min(pause * 2, interval)  # quick at first, then every ``interval`` seconds
        why = f"{last.get('reason', '')} {last.get('message', '')}".strip() if last else "no Ready condition yet"
        raise ServeError(f"InferenceService '{self.name}' in '{self.namespace}' not Ready after {timeout:.0f} s: {why}")

    @property
    def status(self) -> str:
        try:
            cond = ready_condition(self._get())
        except Exception as exc:  # noqa: BLE001
            return f"unknown ({type(exc).__name__})"
        if cond is None:
            return "pending"
        return "ready" if cond.get("status") == "True" else f"not ready ({cond.get('reason', '')})"

    def predict(self, data: Any, protocol: str | None = None, raw: bool = False) -> Any:
        import requests

        if not self.url:
            raise ServeError(f"InferenceService '{self.name}' has no URL yet: wait until it is Ready")
        protocol = protocol or ("v2" if isinstance(data, dict) and "inputs" in data else self.protocol)
        if self._session is None:
            self._session = requests.Session()
        body = client.request_body(data, protocol)
        response = client.post(self._session, client.infer_url(self.url, self.name, protocol), body, self.name)
        return response if raw else client.predictions(response)

    def logs(self, n: int = 50) -> str:
        return (
            f"logs are in the pods: kubectl logs -n {self.namespace} -l "
            f"serving.kserve.io/inferenceservice={self.name} --all-containers --tail {n}"
        )

    def stop(self) -> None:
        from kubernetes import client as k8s

        k8s.CustomObjectsApi(self.api).delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name
        )

    def _repr_html_(self) -> str:
        rows = [
            ("name", self.name),
            ("namespace", self.namespace),
            ("URL", self.url or "-"),
            ("model type", self.package.manifest["type_name"]),
            ("transformer", self.package.manifest.get("transformer") or "-"),
            ("protocol", self.protocol),
            ("status", self.status),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f"<table class='nbmagic-server'>{body}</table>"


def deploy(
    package: Package,
    *,
    storage_uri: str,
    namespace: str = SERVING_NAMESPACE,
    protocol: str = "v1",
    image: str | None = None,
    api: Any = None,
    timeout: float = 600.0,
    interval: float = 2.0,
    uploader: Any = None,
) -> ClusterServer:
    """Upload the package, submit the InferenceService, wait until Ready."""
    from nbmagic.serve import upload

    manifest = inference_service(package, storage_uri=storage_uri, namespace=namespace, protocol=protocol, image=image)
    (uploader or upload.upload)(package.path, storage_uri.rstrip("/"))
    api = api or api_client()
    submit(manifest, api)
    return ClusterServer(package, namespace, api, protocol).wait_ready(timeout, interval)
