"""Review of %serve: decorated transformers, transformers and models that work with dicts (several V2 inputs and
outputs), and what a dead server's predict() says."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbmagic.serve import local, transformer
from nbmagic.serve.api import serve
from nbmagic.serve.errors import ServeError


@pytest.fixture(scope="module")
def ns():
    shell = InteractiveShell.instance()
    shell.run_cell(
        '''
import functools
import numpy as np
def logged(f):
    @functools.wraps(f)
    def wrapper(rows):
        return f(rows)
    return wrapper
@logged
def decorated(rows):
    return [double(r) for r in rows]
@functools.lru_cache(maxsize=None)
def double(x):
    return 2 * x
def to_columns(rows):
    return rows if isinstance(rows, dict) else {"a": rows, "b": rows}
class Columns:
    """Takes a dict of columns, returns a dict of outputs."""
    def predict(self, cols):
        a, b = np.asarray(cols["a"]), np.asarray(cols["b"])
        return {"total": a.sum(axis=1) + b.sum(axis=1), "label": ["big" if v > 4 else "small" for v in a.sum(axis=1)]}
class Crashes:
    def predict(self, x):
        import os
        print("about to crash", flush=True)
        os._exit(3)
''',
        store_history=True,
    ).raise_error()
    return shell.user_ns


def test_decorated_transformer_and_decorated_helper_are_packaged(ns, tmp_path):
    spec = transformer.capture(ns["decorated"], "decorated", {})
    transformer.write(spec, tmp_path)
    loaded = transformer.load(tmp_path)
    assert loaded([1, 2]) == [2, 4]
    assert hasattr(loaded, "__wrapped__")  # the decorator was applied again in the server


def test_dict_from_transformer_reaches_the_model_and_dict_outputs_come_back(ns):
    srv = serve(
        ns["Columns"](),
        name="review-cols",
        model_var="cols",
        transformer=ns["to_columns"],
        transformer_var="to_columns",
    )
    try:
        assert srv.predict([[1, 2], [3, 4]]) == {"total": [6, 14], "label": ["small", "big"]}
        body = {
            "inputs": [
                {"name": "a", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                {"name": "b", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]},
            ]
        }
        assert srv.predict(body) == {"total": [4.0], "label": ["small"]}
        outputs = srv.predict(body, raw=True)["outputs"]
        assert [(o["name"], o["datatype"]) for o in outputs] == [("total", "FP64"), ("label", "BYTES")]
    finally:
        srv.stop()


def test_predict_on_a_dead_server_names_its_last_log_line(ns):
    srv = serve(ns["Crashes"](), name="review-crash", model_var="crash")
    try:
        with pytest.raises(ServeError):
            srv.predict([[1]])
        srv.processes[0].popen.wait(10)
        with pytest.raises(ServeError) as info:
            srv.predict([[1]])
        message = str(info.value)
        assert "\n" not in message
        assert "server 'review-crash' is exited (code 3)" in message and "about to crash" in message
    finally:
        srv.stop()
    assert "review-crash" not in local.live()
