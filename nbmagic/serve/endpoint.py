"""What a served package does with one request: transformer, then the model's named outputs, plus its metadata.

V1 rows reach the transformer as the JSON list; V2 tensors arrive as numpy arrays of their declared dtype
(one input: the array, several: a dict name -> array; BYTES as str). Without a transformer the model gets the
same. A failure is an ``InputError`` naming the transformer or the model (answered 400).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbmagic.serve.protocol import ProtocolError, as_array, datatype


class InputError(ProtocolError):
    """The transformer or the model rejected the request's data."""


def fail(what: str, exc: BaseException) -> InputError:
    text = str(exc).strip().splitlines()
    return InputError(f"{what} failed: {type(exc).__name__}: {text[0] if text else ''}")


class Endpoint:
    """A loaded serving package: ``transform`` (or None) and ``outputs`` (name -> predict function)."""

    def __init__(self, package_dir: Path, *, with_transformer: bool = True, with_model: bool = True) -> None:
        from nbmagic.serve import formats
        from nbmagic.serve import transformer as transformer_mod
        from nbmagic.serve.package import open_package

        self.package = open_package(package_dir)
        manifest = self.package.manifest
        self.name = manifest["name"]
        self.version = str(manifest.get("version") or manifest.get("created") or "1")
        self.transformer_name = manifest.get("transformer")
        self.transform: Callable[[Any], Any] | None = None
        if with_transformer and self.package.transformer_dir is not None:
            self.transform = transformer_mod.load(self.package.transformer_dir)
        self.outputs: dict[str, Callable[[Any], Any]] = {}
        if with_model:
            self.outputs = formats.load_outputs(self.package.model_dir, manifest["kind"], manifest["model_file"])
        self.inputs_meta: list[dict[str, Any]] = []
        self.outputs_meta: list[dict[str, Any]] = []
        if with_model and self.transform is None:
            self._describe_from_features()

    # --- requests ---------------------------------------------------------------------------------------------
    def preprocess(self, data: Any) -> Any:
        """The model's input: the transformer's result, or ``data`` itself."""
        if self.transform is None:
            return data
        try:
            return self.transform(data)
        except Exception as exc:  # noqa: BLE001 - the user's function: any error is the request's
            raise fail(f"transformer '{self.transformer_name}'", exc) from None

    def predict(self, features: Any, requested: list[str] | None = None) -> dict[str, Any]:
        """name -> value of the requested outputs (default: the first; a dict result: one output per key)."""
        import numpy as np

        x = features if isinstance(features, dict) or hasattr(features, "shape") else np.asarray(features)
        first = next(iter(self.outputs))
        computed: dict[str, Any] = {}

        def value(name: str) -> Any:
            if name not in computed:
                computed[name] = self._call(name, x)
            return computed[name]

        if not requested:
            result = value(first)
            return {str(k): v for k, v in result.items()} if isinstance(result, dict) else {first: result}
        results: dict[str, Any] = {}
        for name in requested:
            if name in self.outputs and not isinstance(value(name), dict):
                results[name] = value(name)
                continue
            result = value(first)
            if isinstance(result, dict) and name in result:
                results[name] = result[name]
                continue
            keys = list(result) if isinstance(result, dict) else list(self.outputs)
            raise InputError(f"model '{self.name}' has no output '{name}' (outputs: {', '.join(map(str, keys))})")
        return results

    def _call(self, name: str, x: Any) -> Any:
        try:
            return self.outputs[name](x)
        except Exception as exc:  # noqa: BLE001
            raise fail(f"model '{self.name}' {name}", exc) from None

    # --- metadata ---------------------------------------------------------------------------------------------
    def _describe_from_features(self) -> None:
        """Inputs and outputs from ``n_features_in_`` and one prediction on a row of zeros."""
        import numpy as np

        fn = next(iter(self.outputs.values()))
        owner = getattr(fn, "__self__", None)
        n = getattr(owner, "n_features_in_", None)
        if not isinstance(n, int):
            return
        row = np.zeros((1, n))
        self.inputs_meta = [{"name": "input-0", "datatype": "FP64", "shape": [-1, n]}]
        try:
            self.outputs_meta = [_meta(name, as_array(f(row))) for name, f in self.outputs.items()]
        except Exception:  # noqa: BLE001 - metadata only: the first request fills it instead
            self.outputs_meta = []

    def observe(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Fill missing metadata from the first request that succeeded."""
        if not self.inputs_meta:
            self.inputs_meta = [_meta(k, as_array(v)) for k, v in inputs.items()]
        known = {m["name"] for m in self.outputs_meta}
        self.outputs_meta += [_meta(k, as_array(v)) for k, v in outputs.items() if k not in known]

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": f"nbmagic/{self.package.manifest['kind']}",
            "inputs": self.inputs_meta,
            "outputs": self.outputs_meta,
        }


def _meta(name: str, array: Any) -> dict[str, Any]:
    shape = list(array.shape)
    if shape:
        shape[0] = -1  # the batch dimension
    try:
        kind = datatype(array)
    except ProtocolError:
        kind = "BYTES"
    return {"name": name, "datatype": kind, "shape": shape}
