"""xgboost, lightgbm, torch and Keras (3, on the torch backend) end to end: stored and loaded back by the run
store's marshalling, served with %serve, predicted over V1 and V2 with the kernel's own predictions as the
reference; tensors reach the model in the dtype they were sent in. All of them are in the test extras."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from helpers.serve_shell import serve_shell
from nbmagic.runtime import marshal

pytestmark = pytest.mark.slow

rng = np.random.default_rng(0)
X = rng.random((80, 4))
y = (X[:, 0] > 0.5).astype(int)


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    with serve_shell(tmp_path_factory.mktemp("home"), "pass") as ip:
        yield ip


def _stored(obj, tmp_path):
    tmp_path.mkdir(parents=True)
    marshal.save(obj, tmp_path, "model")
    return marshal.load(tmp_path, "model")


def _serve_and_compare(shell, name, model, expected, v2_datatype):
    shell.user_ns[name] = model
    srv = shell.run_line_magic("serve", f"{name} --name {name.replace('_', '-')}")
    try:
        rows = X[:5]
        np.testing.assert_allclose(srv.predict(rows.tolist()), expected, rtol=1e-6)
        np.testing.assert_allclose(srv.predict(rows.astype(np.float32), protocol="v2"), expected, rtol=1e-5)
        out = srv.predict(rows.astype(np.float32), protocol="v2", raw=True)["outputs"][0]
        assert out["datatype"] == v2_datatype and out["shape"][0] == 5
    finally:
        srv.stop()


def test_xgboost_classifier_and_booster(shell, tmp_path):
    xgb = pytest.importorskip("xgboost")
    model = _stored(xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y), tmp_path / "clf")
    booster = model.get_booster()
    expected = booster.predict(xgb.DMatrix(X[:5].astype(np.float32)))
    _serve_and_compare(shell, "xgb_clf", model, expected, "FP32")
    _serve_and_compare(shell, "xgb_booster", _stored(booster, tmp_path / "booster"), expected, "FP32")


def test_lightgbm_booster(shell, tmp_path):
    lgb = pytest.importorskip("lightgbm")
    booster = lgb.train({"verbose": -1, "num_leaves": 4}, lgb.Dataset(X, X[:, 0] * 2), num_boost_round=5)
    model = _stored(booster, tmp_path / "lgb")
    _serve_and_compare(shell, "lgb_booster", model, booster.predict(X[:5]), "FP64")


def test_torch_module_keeps_float32(shell, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _stored(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh()), tmp_path / "torch")
    with torch.no_grad():
        expected = net(torch.as_tensor(X[:5], dtype=torch.float32)).numpy()
    _serve_and_compare(shell, "torch_net", net, expected, "FP32")


def _v2(srv, array):
    return srv.predict(array, protocol="v2", raw=True)["outputs"][0]


def test_torch_model_sees_the_dtype_sent(shell, tmp_path):
    """A parameter-free module answers in the dtype it received: FP32, FP64 and INT32 each arrive as sent (no
    float64 detour, no narrowing); a float32 model gets V1 JSON numbers as float32 (its own dtype)."""
    torch = pytest.importorskip("torch")
    shell.user_ns["identity"] = _stored(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity()), tmp_path / "id")
    srv = shell.run_line_magic("serve", "identity --name torch-identity")
    try:
        rows = X[:3]
        for array, datatype in ((rows.astype(np.float32), "FP32"), (rows, "FP64"), (rows.astype(np.int32), "INT32")):
            out = _v2(srv, array)
            assert out["datatype"] == datatype and out["shape"] == [3, 4]
            np.testing.assert_array_equal(np.asarray(out["data"], dtype=array.dtype).reshape(3, 4), array)
    finally:
        srv.stop()
    shell.user_ns["linear"] = _stored(torch.nn.Linear(4, 1).to(torch.float32), tmp_path / "linear")
    srv = shell.run_line_magic("serve", "linear --name torch-linear")
    try:
        assert np.asarray(srv.predict(X[:2].tolist())).shape == (2, 1)  # float64 JSON -> the model's float32
        assert _v2(srv, X[:2].astype(np.float32))["datatype"] == "FP32"
    finally:
        srv.stop()


@pytest.fixture
def keras_on_torch(monkeypatch):
    """Keras 3 on the torch backend (the test extras carry keras and a CPU torch, not TensorFlow)."""
    if "keras" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.config.backend() == "tensorflow":
        pytest.skip("Keras runs on TensorFlow here: the SavedModel path is not what this test covers")
    return keras


def test_keras_model_keeps_float32(shell, tmp_path, keras_on_torch):
    keras = keras_on_torch
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    model = _stored(model, tmp_path / "keras")
    expected = keras.ops.convert_to_numpy(model(X[:5].astype(np.float32), training=False))
    _serve_and_compare(shell, "keras_net", model, expected, "FP32")
    from nbmagic.serve.api import package_dir
    from nbmagic.serve.package import open_package

    package = open_package(package_dir("keras-net"))
    # a .keras file: no KServe runtime reads it, so the cluster form uses nbmagic's own server
    assert package.manifest["model_file"] == "model.keras" and package.manifest["model_format"] is None
