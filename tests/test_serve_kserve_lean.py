"""The model server imports only KServe's server modules; the rest of the package still loads when asked for."""

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
