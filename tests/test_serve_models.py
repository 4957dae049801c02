"""xgboost, lightgbm and torch end to end: stored and loaded back by the run store's marshalling, served with
%serve, predicted over V1 and V2 with the kernel's own predictions as the reference (torch: skipped without it)."""

from __future__ import annotations

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
