"""A serving package on disk: the model in its runtime's format, the transformer, and a small manifest.

Layout (the ``model/`` directory alone is what a KServe built-in runtime's ``storageUri`` points at)::

    DIR/serve.json                      name, kind, modelFormat, model file, transformer entry
    DIR/model/model.joblib              (or model.json, model.bst, 1/, model.dill)
    DIR/transformer/transformer.json    imports, notebook function sources, asset names
    DIR/transformer/assets/NAME.dill    --with objects
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbmagic.k8s_names import is_dns1035_label
from nbmagic.serve import formats
from nbmagic.serve import transformer as transformer_mod
from nbmagic.serve.detect import ModelKind, detect
from nbmagic.serve.errors import ServeError

MANIFEST = "serve.json"


def validate_name(name: str) -> str:
    """A server name becomes a path, a URL segment and a Kubernetes name: DNS-1035 label."""
    if not is_dns1035_label(name or ""):
        raise ServeError(
            f"server name '{name}' is invalid: use lowercase letters, digits and '-', starting with a letter"
        )
    return name


def default_name(variable: str) -> str:
    """``best_model`` -> ``best-model``."""
    name = re.sub(r"[^a-z0-9-]+", "-", variable.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".strip("-")
    return name[:63].rstrip("-")


@dataclass(frozen=True)
class Package:
    """A written package directory and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def transformer_dir(self) -> Path | None:
        return self.path / "transformer" if self.manifest.get("transformer") else None


def build(
    model: Any,
    directory: Path,
    *,
    name: str,
    model_var: str = "model",
    transformer: Any = None,
    transformer_var: str | None = None,
    with_objects: dict[str, Any] | None = None,
) -> Package:
    """Detect, save and package ``model`` (and the transformer) into ``directory`` (replaced if present)."""
    validate_name(name)
    kind: ModelKind = detect(model, model_var)
    spec = None
    if transformer is not None:
        spec = transformer_mod.capture(
            transformer, transformer_var or getattr(transformer, "__name__", "transform"), with_objects
        )
    elif with_objects:
        raise ServeError(f"--with {', '.join(with_objects)} given without --transformer")
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model_file = formats.save_model(model, kind, staging / "model", model_var)
        if spec is not None:
            transformer_mod.write(spec, staging / "transformer")
        manifest = {
            "name": name,
            "kind": kind.kind,
            "model_format": formats.kserve_format(kind.model_format, model_file),
            "type_name": kind.type_name,
            "model_file": model_file,
            "transformer": spec.entry if spec else None,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return Package(directory, manifest)


def open_package(directory: Path) -> Package:
    """Read a package written by :func:`build`."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ServeError(f"no serving package at {directory} (missing {MANIFEST})")
    return Package(Path(directory), json.loads(path.read_text()))
