"""The model server imports only KServe's server modules (the rest loads when asked for); the warm process
preloads installed model libraries only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from nbmagic.serve import kserve_lean
kserve = kserve_lean.load()
lean = sorted(m for m in ("kubernetes", "google.auth", "kserve.api.kserve_client") if m in sys.modules)
from kserve.model_server import ModelServer
from kserve.model import Model
import kserve as again
client = again.KServeClient  # not loaded yet: the package's own __init__ runs now
print(json.dumps({
    "lean": lean,
    "same_package": again is kserve,
    "model_server": again.ModelServer is ModelServer,
    "model": again.Model is Model,
    "client": client.__module__,
    "kubernetes_after": "kubernetes" in sys.modules,
    "missing": hasattr(again, "no_such_name"),
}))
"""


def test_server_modules_load_without_the_kubernetes_client():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {
        "lean": [],
        "same_package": True,
        "model_server": True,
        "model": True,
        "client": "kserve.api.kserve_client",
        "kubernetes_after": True,
        "missing": False,
    }


LIBRARIES = """
import json, sys
sys.path.insert(0, ".")
from nbmagic.serve import forkserver
forkserver.import_libraries(["usermod", "sklearn.dummy", "sklearn.no_such_module", "keras_like.thing"])
print(json.dumps({m: m in sys.modules for m in ("usermod", "sklearn.dummy", "sklearn.no_such_module")}))
"""


def test_warm_process_keeps_only_installed_model_libraries(tmp_path):
    """Before forking, the warm process imports the model's library module (later servers start with it), never
    a user's own file: that may change between two servers and the fork would keep the old one."""
    (tmp_path / "usermod.py").write_text("VALUE = 1\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", LIBRARIES], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "usermod": False,
        "sklearn.dummy": True,
        "sklearn.no_such_module": False,
    }


REBOUND = """
import json, sys
from nbmagic.serve import kserve_lean
kserve = kserve_lean.load()
seen = {
    "utils": kserve.utils.__name__,
    "constants": kserve.constants.__name__,
    "get_predict_input": callable(kserve.utils.get_predict_input),
    "v1beta1": kserve.constants.KSERVE_V1BETA1,
    "lean": "kubernetes" in sys.modules,
}
sys.modules["kubernetes"] = None  # the real __init__ now fails importing the Kubernetes client
errors = []
for _ in range(2):
    try:
        kserve.KServeClient
    except Exception as exc:
        errors.append(type(exc).__name__ + ": " + str(exc))
seen["errors"] = errors
print(json.dumps(seen))
"""


def test_utils_and_constants_are_bound_as_kserve_binds_them_and_a_failed_init_keeps_its_error():
    """User transformer code calls ``kserve.utils.get_predict_input`` and reads ``kserve.constants.KSERVE_V1BETA1``;
    when the real ``__init__`` fails, later attributes raise that first error, not a bare AttributeError."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", REBOUND], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from kserve.constants import constants

    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "utils": "kserve.utils.utils",
        "constants": "kserve.constants.constants",
        "get_predict_input": True,
        "v1beta1": constants.KSERVE_V1BETA1,
        "lean": False,
        "errors": ["ModuleNotFoundError: import of kubernetes halted; None in sys.modules"] * 2,
    }


DEFERRED_PANDAS = """
import json, sys
from nbmagic.serve import kserve_lean
kserve_lean.load()
before = "pandas" in sys.modules
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve.utils import utils
tensor = InferInput("x", [2], "FP32", data=[1.5, 2.5])
frame = InferRequest("m", [tensor]).as_dataframe()
import pandas
print(json.dumps({
    "before": before,
    "frame": type(frame).__module__ + "." + type(frame).__name__,
    "rows": frame["x"].tolist(),
    "real_module": type(sys.modules["pandas"]).__name__,
    "same_class": isinstance(frame, pandas.DataFrame),
    "utils_response": utils.get_predict_response({"instances": [[1]]}, pandas.DataFrame({"a": [1]}), "m"),
}))
"""


def test_the_v2_types_import_pandas_on_first_use_only():
    """pandas (a quarter of KServe's import time) loads when a pandas helper is first called, not at start-up."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", DEFERRED_PANDAS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "before": False,
        "frame": "pandas.core.frame.DataFrame",
        "rows": [1.5, 2.5],
        "real_module": "module",
        "same_class": True,
        "utils_response": {"predictions": [{"a": 1}]},
    }


REBOUND_PANDAS = """
import json, sys
from nbmagic.serve import kserve_lean
kserve_lean.load()
from kserve.protocol import infer_type
from kserve.utils import utils
import pandas  # imported by other code first: the stand-ins answer its dunders from then on
version = infer_type.pd.__version__
first_use = infer_type.pd.DataFrame  # then the modules hold pandas itself
print(json.dumps({
    "version": version == pandas.__version__,
    "infer_type": infer_type.pd is pandas,
    "utils": utils.pd is pandas,
    "frame": first_use is pandas.DataFrame,
}))
"""


def test_after_pandas_is_imported_the_stand_ins_give_way_to_it():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", REBOUND_PANDAS], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "version": True,
        "infer_type": True,
        "utils": True,
        "frame": True,
    }
