"""Save a model in the file layout its KServe runtime expects, and load it back as a predict function.

Layouts (what KServe's runtimes read from ``storageUri``):
  sklearn   one ``model.joblib``                     (sklearnserver accepts exactly one .joblib/.pkl)
  xgboost   ``model.json``                           (xgbserver: .bst/.json/.ubj via xgboost.Booster)
  lightgbm  ``model.bst``                            (lgbserver: lightgbm.Booster(model_file=...))
  keras     TF SavedModel in ``1/`` (numbered dir)   (TF Serving); Keras 3 on another backend (torch, jax):
            ``model.keras`` + ``keras_backend``, served by nbmagic's own server image on a cluster
  pytorch, predict, callable: ``model.dill``         (no built-in runtime can load an arbitrary Python object:
            TorchServe needs a .mar with a handler, Triton a TorchScript trace that needs example inputs;
            dill, unlike pickle, also stores classes and functions defined in the notebook. These are served
            by nbmagic's own server image on a cluster.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbmagic.serve.detect import ModelKind
from nbmagic.serve.errors import ServeError

MODEL_FILES = {
    "sklearn": "model.joblib",
    "xgboost": "model.json",
    "lightgbm": "model.bst",
    "keras": "1",
    "pytorch": "model.dill",
    "predict": "model.dill",
    "callable": "model.dill",
}


def save_model(model: Any, kind: ModelKind, directory: Path, name: str = "model") -> str:
    """Write ``model`` into ``directory``; returns the file (or directory) name written."""
    directory.mkdir(parents=True, exist_ok=True)
    filename = MODEL_FILES[kind.kind]
    target = directory / filename
    if kind.kind == "keras" and keras_backend() not in (None, "tensorflow"):
        filename = KERAS_FILE
    try:
        if kind.kind == "sklearn":
            import joblib

            joblib.dump(model, target)
        elif kind.kind == "xgboost":
            booster = model.get_booster() if hasattr(model, "get_booster") else model
            booster.save_model(str(target))
        elif kind.kind == "lightgbm":
            booster = getattr(model, "booster_", model)
            booster.save_model(str(target))
        elif filename == KERAS_FILE:
            model.save(str(directory / KERAS_FILE))
            (directory / "keras_backend").write_text(str(keras_backend()))
        elif kind.kind == "keras":
            _save_keras(model, target)
        else:
            dump_object(model, target)
    except ServeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library error becomes one line naming the model
        raise ServeError(f"cannot save model '{name}' ({kind.type_name}) as {filename}: {_one_line(exc)}") from exc
    return filename


KERAS_FILE = "model.keras"


def keras_backend() -> str | None:
    """The backend of the Keras 3 in use (None: no Keras 3 imported)."""
    import sys

    config = getattr(sys.modules.get("keras"), "config", None)
    backend = getattr(config, "backend", None)
    return backend() if callable(backend) else None


def kserve_format(model_format: str | None, model_file: str) -> str | None:
    """The KServe modelFormat whose runtime reads ``model_file`` (None: only nbmagic's own server does)."""
    return None if model_file == KERAS_FILE else model_format


def _save_keras(model: Any, target: Path) -> None:
    if hasattr(model, "export"):  # Keras 3: export() writes a TF SavedModel
        model.export(str(target))
    else:
        import tensorflow as tf

        tf.saved_model.save(model, str(target))


def dump_object(obj: Any, target: Path) -> None:
    """Serialize any Python object with dill (notebook classes and functions included)."""
    import dill

    data = dill.dumps(obj, recurse=True)
    target.write_bytes(data)


def load_object(path: Path) -> Any:
    import dill

    return dill.loads(path.read_bytes())


def load_outputs(directory: Path, kind: str, filename: str) -> dict[str, Callable[[Any], Any]]:
    """The model's named outputs, first the default: ``predict`` (and ``predict_proba`` where the model has it)
    for scikit-learn-style models, ``output-0`` for the others."""
    if kind in ("sklearn", "predict"):
        import joblib

        model = joblib.load(directory / filename) if kind == "sklearn" else load_object(directory / filename)
        outputs = {"predict": model.predict}
        if callable(getattr(model, "predict_proba", None)):
            outputs["predict_proba"] = model.predict_proba
        return outputs
    return {"output-0": load_predict(directory, kind, filename)}


def load_predict(directory: Path, kind: str, filename: str) -> Callable[[Any], Any]:
    """Load the saved model and return ``f(inputs) -> predictions``."""
    path = directory / filename
    if kind == "sklearn":
        import joblib

        return joblib.load(path).predict
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(path))
        return lambda x: booster.predict(xgb.DMatrix(x))
    if kind == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path)).predict
    if kind == "keras" and filename == KERAS_FILE:
        return _load_keras3(directory)
    if kind == "keras":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
        if fn is None:
            return lambda x: loaded(tf.constant(x)).numpy()
        return lambda x: next(iter(fn(tf.constant(x)).values())).numpy()
    obj = load_object(path)
    if kind == "pytorch":
        import torch

        obj.eval()

        weights = next((p.dtype for p in getattr(obj, "parameters", list)() if p.dtype.is_floating_point), None)

        def predict_torch(x: Any) -> Any:
            tensor = torch.as_tensor(x)
            if tensor.dtype == torch.float64 and weights not in (None, torch.float64):
                tensor = tensor.to(weights)  # V1 JSON numbers (float64) into a float32 model: its own dtype
            with torch.no_grad():
                return obj(tensor).numpy()

        return predict_torch
    if kind == "predict":
        return obj.predict
    return obj


def _load_keras3(directory: Path) -> Callable[[Any], Any]:
    """A ``.keras`` model on the backend it was saved with; inputs keep their dtype up to the model's own
    input layer (Keras casts there, as it does in the notebook)."""
    import os
    import sys

    backend = (directory / "keras_backend").read_text().strip()
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    import keras

    if keras.config.backend() != backend:
        raise ServeError(
            f"the model was saved with Keras on {backend}; this server's Keras runs {keras.config.backend()}"
        )
    model = keras.saving.load_model(str(directory / KERAS_FILE), compile=False)

    def predict_keras(x: Any) -> Any:
        return keras.ops.convert_to_numpy(model(x, training=False))

    return predict_keras


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
