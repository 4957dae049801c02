"""The serving entry point the magic (and any script) calls: package a model, then serve it here or on a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbmagic.config import home
from nbmagic.kube import SERVING_NAMESPACE
from nbmagic.serve.errors import ServeError
from nbmagic.serve.package import Package, build, default_name, validate_name

STORAGE_ENV = "NBMAGIC_STORAGE_URI"


def package_dir(name: str) -> Path:
    return home() / "serve" / validate_name(name) / "package"


def make_package(
    model: Any,
    *,
    name: str | None = None,
    model_var: str = "model",
    transformer: Any = None,
    transformer_var: str | None = None,
    with_objects: dict[str, Any] | None = None,
    directory: Path | None = None,
) -> Package:
    """Detect and save ``model`` (+ transformer and its objects) under ``$NBMAGIC_HOME/serve/NAME/package``."""
    name = validate_name(name or default_name(model_var))
    return build(
        model,
        directory or package_dir(name),
        name=name,
        model_var=model_var,
        transformer=transformer,
        transformer_var=transformer_var,
        with_objects=with_objects,
    )


def serve(
    model: Any,
    *,
    name: str | None = None,
    model_var: str = "model",
    transformer: Any = None,
    transformer_var: str | None = None,
    with_objects: dict[str, Any] | None = None,
    port: int | None = None,
    split: bool = False,
    protocol: str = "v1",
    grpc_port: int | None = None,
    cluster: bool = False,
    namespace: str = SERVING_NAMESPACE,
    storage_uri: str | None = None,
    image: str | None = None,
    api: Any = None,
    timeout: float | None = None,
) -> Any:
    """Serve ``model`` locally (a ``local.Server``) or, with ``cluster=True``, as an InferenceService."""
    if protocol not in ("v1", "v2"):
        raise ServeError(f"--protocol {protocol} is not supported: use v1 or v2")
    if not cluster and (storage_uri or image):
        raise ServeError("--storage-uri and --image are for --cluster")
    if not cluster:
        from nbmagic.serve import warm

        warm.hint(model)  # the warm process imports the model's library while the package is written
    package = make_package(
        model,
        name=name,
        model_var=model_var,
        transformer=transformer,
        transformer_var=transformer_var,
        with_objects=with_objects,
    )
    if cluster:
        from nbmagic.serve import cluster as cluster_mod

        if split or port or grpc_port is not None:
            raise ServeError(
                "--split, --port and --grpc are for local serving (on a cluster the transformer "
                "is always its own component)"
            )
        base = storage_uri or os.environ.get(STORAGE_ENV)
        if not base:
            raise ServeError(f"--cluster needs --storage-uri (s3://, gs://, pvc://) or ${STORAGE_ENV}")
        uri = base if storage_uri else f"{base.rstrip('/')}/{package.name}"
        return cluster_mod.deploy(
            package,
            storage_uri=uri,
            namespace=namespace,
            protocol=protocol,
            image=image,
            api=api,
            timeout=timeout or 600.0,
        )
    from nbmagic.serve import local

    return local.serve(package, port=port, split=split, protocol=protocol, grpc_port=grpc_port, timeout=timeout or 60.0)
