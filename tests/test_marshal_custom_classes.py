"""Models built from classes defined in the notebook: stored so a fresh process loads them, or refused in one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nbmagic.runtime import marshal
from nbmagic.runtime.marshal import MarshalError


@pytest.fixture
def keras_on_torch(monkeypatch):
    """Keras 3 on the torch backend (the test extras carry keras and a CPU torch, not TensorFlow)."""
    if "keras" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def test_keras_unregistered_model_class_is_refused_naming_the_decorator(tmp_path, keras_on_torch):
    keras = keras_on_torch

    class MyModel(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = MyModel()
    model(np.ones((1, 3), dtype="float32"))
    with pytest.raises(MarshalError) as info:
        marshal.save(model, tmp_path, "model")
    assert str(info.value) == (
        "cannot store variable 'model' of type MyModel: Keras could not load it back (class MyModel is not "
        "registered); decorate it with @keras.saving.register_keras_serializable()"
    )
    assert list(tmp_path.iterdir()) == []


def test_keras_registered_model_class_round_trips(tmp_path, keras_on_torch):
    keras = keras_on_torch

    @keras.saving.register_keras_serializable(package="nbmagic_test")
    class Registered(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Registered()
    x = np.ones((1, 3), dtype="float32")
    model(x)
    assert marshal.save(model, tmp_path, "model")["format"] == "keras"
    back = marshal.load(tmp_path, "model")
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


SAVE = """
import pathlib, torch
from nbmagic.runtime import marshal
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
    def forward(self, x):
        return self.linear(x)
torch.manual_seed(0)
net = torch.nn.Sequential(Block(), torch.nn.ReLU())
marshal.save(net, pathlib.Path({path!r}), "net")
print(net(torch.ones(1, 3)).tolist())
"""
LOAD = """
import pathlib, torch
from nbmagic.runtime import marshal
print(marshal.load(pathlib.Path({path!r}), "net")(torch.ones(1, 3)).tolist())
"""


def test_torch_notebook_class_inside_a_library_container_loads_in_a_fresh_process(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("dill")
    path = str(tmp_path)
    env = dict(os.environ)

    def run(code):
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code).format(path=path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
        return done.stdout.strip()

    saved = run(SAVE)
    assert run(LOAD) == saved
