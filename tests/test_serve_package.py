"""Packaging for serving: model detection, runtime file layouts, transformer capture and reload (no server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from sklearn.linear_model import LogisticRegression

from nbmagic.serve import formats, transformer
from nbmagic.serve.detect import detect
from nbmagic.serve.errors import ServeError
from nbmagic.serve.package import build, default_name, open_package, validate_name


@pytest.fixture(scope="module")
def ns():
    """A notebook namespace: functions defined in IPython cells (their source comes from IPython's linecache)."""
    shell = InteractiveShell.instance()
    result = shell.run_cell(
        """
import numpy as np
import math
from collections import Counter
tokenizer = {"A": 0, "C": 1, "G": 2, "U": 3}
SCALE = 2.0
def one_hot_counts(seq):
    return [sum(1 for c in seq if tokenizer[c] == k) for k in range(4)]
def process_features(rows):
    return np.array([one_hot_counts(s) for s in rows], dtype=float) * SCALE
def uses_undefined(rows):
    return [not_defined_anywhere(r) for r in rows]
def uses_counter(rows):
    return [len(Counter(r)) + math.floor(0.5) for r in rows]
class Doubler:
    def predict(self, x):
        return [2 * v for v in x]
doubler = Doubler()
""",
        store_history=True,
    )
    result.raise_error()
    return shell.user_ns


def test_detect_kinds(ns):
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    assert detect(model).kind == "sklearn" and detect(model).model_format == "sklearn"
    assert detect(ns["doubler"]).kind == "predict" and detect(ns["doubler"]).model_format is None
    assert detect(lambda x: x).kind == "callable"


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"a": 1}, r"'m' \(dict\) is not a model"),
        (LogisticRegression(), "is not fitted"),
        (LogisticRegression, "is the class LogisticRegression"),
    ],
)
def test_detect_rejects_non_models(obj, message):
    with pytest.raises(ServeError, match=message):
        detect(obj, "m")


def test_sklearn_saved_as_one_joblib(tmp_path):
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    pkg = build(model, tmp_path / "p", name="lr", model_var="clf")
    assert sorted(p.name for p in pkg.model_dir.iterdir()) == ["model.joblib"]
    assert open_package(pkg.path).manifest["model_format"] == "sklearn"
    predict = formats.load_predict(pkg.model_dir, "sklearn", "model.joblib")
    assert list(predict([[0.0], [1.0]])) == [0, 1]


def test_transformer_captures_imports_functions_and_assets(ns, tmp_path):
    spec = transformer.capture(
        ns["process_features"], "process_features", {"tokenizer": ns["tokenizer"], "SCALE": ns["SCALE"]}
    )
    assert [f["name"] for f in spec.functions] == ["one_hot_counts", "process_features"]
    assert {"name": "np", "module": "numpy", "attr": None} in spec.imports
    assert set(spec.assets) == {"tokenizer", "SCALE"}
    transformer.write(spec, tmp_path)
    manifest = json.loads((tmp_path / "transformer.json").read_text())
    assert manifest["entry"] == "process_features" and manifest["assets"] == ["SCALE", "tokenizer"]
    fn = transformer.load(tmp_path)
    assert fn(["AAC", "UUUG"]).tolist() == ns["process_features"](["AAC", "UUUG"]).tolist()


def test_transformer_imported_names_resolve(ns, tmp_path):
    spec = transformer.capture(ns["uses_counter"], "uses_counter")
    assert {"name": "Counter", "module": "collections", "attr": "Counter"} in spec.imports
    transformer.write(spec, tmp_path)
    assert transformer.load(tmp_path)(["AAB"]) == [2]


def test_transformer_missing_name_is_named(ns):
    with pytest.raises(ServeError, match=r"uses 'tokenizer' \(dict\).*add --with tokenizer"):
        transformer.capture(ns["process_features"], "process_features", {"SCALE": 2.0})
    with pytest.raises(ServeError, match="'not_defined_anywhere', which is not defined"):
        transformer.capture(ns["uses_undefined"], "uses_undefined")


def test_unserializable_asset_is_named(ns, tmp_path):
    spec = transformer.capture(
        ns["process_features"], "process_features", {"tokenizer": (c for c in "ACGU"), "SCALE": 2.0}
    )
    with pytest.raises(ServeError, match=r"cannot serialize --with object 'tokenizer' \(generator\): TypeError"):
        transformer.write(spec, tmp_path)


def test_with_without_transformer_and_bad_names(tmp_path):
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ServeError, match="--with tok given without --transformer"):
        build(model, tmp_path / "p", name="m", with_objects={"tok": {}})
    with pytest.raises(ServeError, match="server name 'Bad_Name' is invalid"):
        validate_name("Bad_Name")
    with pytest.raises(ServeError, match="server name '../x' is invalid"):
        build(model, tmp_path / "p", name="../x")
    assert default_name("best_model") == "best-model" and default_name("_m1") == "m1"


def test_failed_build_leaves_no_package(ns, tmp_path):
    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ServeError):
        build(
            model,
            tmp_path / "p",
            name="m",
            transformer=ns["process_features"],
            transformer_var="process_features",
            with_objects={"tokenizer": (c for c in "ACGU"), "SCALE": 1.0},
        )
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.tmp").exists()


def test_generic_model_round_trips_with_dill(ns, tmp_path):
    pkg = build(ns["doubler"], tmp_path / "p", name="dbl", model_var="doubler")
    assert pkg.manifest["model_file"] == "model.dill"
    predict = formats.load_predict(pkg.model_dir, "predict", "model.dill")
    assert predict(np.array([1, 2])) == [2, 4]
