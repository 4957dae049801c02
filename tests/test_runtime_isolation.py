"""nbmagic/runtime/ stands alone: standard library and the formats' libraries only, and runs from the zipped package
a compiled pipeline carries, in an interpreter where no nbmagic is installed."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import nbmagic
from nbmagic.compile.bundle import RUNTIME_DIR, runtime_base64, runtime_zip
from nbmagic.runtime import marshal

PACKAGE_DIR = Path(nbmagic.__file__).resolve().parent
FORMAT_LIBRARIES = {"numpy", "pandas", "pyarrow", "joblib", "dill", "torch", "keras", "tensorflow", "xgboost"}
FORMAT_LIBRARIES |= {"lightgbm", "sklearn", "xxhash", "IPython"}

# Imports every module of nbmagic/runtime/ with the rest of nbmagic blocked (its __init__ never runs), then lists
# every module that got imported which is neither standard library nor nbmagic.runtime.
IMPORT_ALL = """
import importlib, importlib.abc, pkgutil, sys, types
package_dir = sys.argv[1]

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("nbmagic.") and not name.startswith("nbmagic.runtime"):
            raise ImportError(f"nbmagic.runtime imported {name}")
        return None

sys.meta_path.insert(0, Block())
stub = types.ModuleType("nbmagic")
stub.__path__ = [package_dir]
sys.modules["nbmagic"] = stub
before = set(sys.modules)
import nbmagic.runtime
names = ["nbmagic.runtime"] + [m.name for m in pkgutil.walk_packages(nbmagic.runtime.__path__, "nbmagic.runtime.")]
for name in names:
    importlib.import_module(name)
new = {m.split(".")[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {"nbmagic"}
print(sorted(names))
print(sorted(new))
"""


def test_the_runtime_imports_only_the_standard_library_in_a_clean_interpreter():
    out = subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_ALL, str(PACKAGE_DIR)], check=True, capture_output=True, text=True
    )
    names_line, extra_line = out.stdout.strip().splitlines()[-2:]
    names = eval(names_line)  # a printed list of str
    assert "nbmagic.runtime.component" in names and "nbmagic.runtime.marshal.npy" in names
    assert "nbmagic.runtime.marshal.lightgbm" in names and "nbmagic.runtime.step" in names
    assert eval(extra_line) == []  # format libraries load lazily, only when a value of theirs is stored


def test_a_runtime_module_importing_the_rest_of_nbmagic_is_caught(tmp_path):
    """The check above would fail for a stray import: run it on a copy of the package with one added."""
    import shutil

    copy = tmp_path / "nbmagic"
    shutil.copytree(PACKAGE_DIR / "runtime", copy / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "runtime" / "stray.py").write_text("from nbmagic.errors import NbMagicError\n")
    out = subprocess.run([sys.executable, "-I", "-c", IMPORT_ALL, str(copy)], capture_output=True, text=True)
    assert out.returncode != 0 and "nbmagic.runtime imported nbmagic.errors" in out.stderr


def test_the_bundle_is_the_runtime_package_and_deterministic():
    data = runtime_zip()
    assert data == runtime_zip() and base64.b64decode(runtime_base64()) == data
    with zipfile.ZipFile(BytesIO(data)) as zf:
        names = set(zf.namelist())
        shipped = {
            "nbmagic/runtime/" + p.relative_to(RUNTIME_DIR).as_posix()
            for p in RUNTIME_DIR.rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert names == shipped | {"nbmagic/__init__.py"}
        assert zf.read("nbmagic/runtime/step.py") == (RUNTIME_DIR / "step.py").read_bytes()


# What a compiled step does: the runtime's zip is an input artifact (a file KFP's launcher downloaded, named
# without a suffix), put first on sys.path.
STEP = """
import json, os, sys, types
runtime, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, runtime)
from nbmagic.runtime.component import nbmagic_run
import nbmagic.runtime.component as component

def artifact(path):
    return types.SimpleNamespace(path=path, metadata={})

class Metrics:
    def __init__(self):
        self.logged = {}
    def log_metric(self, name, value):
        self.logged[name] = value

out, metrics = artifact(os.path.join(work, "out")), Metrics()
nbmagic_run(
    step="double",
    label="demo.ipynb cell 2",
    code="doubled = [v * factor for v in values]\\ntotal = sum(doubled)\\n",
    prelude="",
    parameters={"factor": 2},
    inputs={"values": artifact(os.path.join(work, "values"))},
    outputs={"doubled": out},
    metric_names=("total",),
    metrics=metrics,
)
print("FROM", component.__file__)
print("NBMAGIC", sorted(m for m in sys.modules if m.split(".")[0] == "nbmagic"))
print("LOGGED", json.dumps(metrics.logged))
print("METADATA", json.dumps(out.metadata))
"""


def test_a_component_runs_its_step_from_the_zipped_runtime_without_nbmagic_installed(tmp_path):
    (tmp_path / "values").mkdir()
    marshal.save([1, 2, 3], tmp_path / "values", "values")
    script = STEP
    (tmp_path / "runtime").write_bytes(runtime_zip())
    # -I: no PYTHONPATH, no user site; and nbmagic's own folder is not where the script runs
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, str(tmp_path / "runtime"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.stdout.splitlines() if " " in line}
    assert lines["FROM"] == str(tmp_path / "runtime" / "nbmagic" / "runtime" / "component.py")  # from the zip
    loaded = eval(lines["NBMAGIC"])
    assert all(name == "nbmagic" or name.startswith("nbmagic.runtime") for name in loaded), loaded
    assert marshal.load(tmp_path / "out", "doubled") == [2, 4, 6]
    assert json.loads(lines["LOGGED"]) == {"total": 12}
    assert json.loads(lines["METADATA"])["hash"] == marshal.read_manifest(tmp_path / "out")["hash"]
    assert 'nbmagic-metric {"step": "double", "name": "total", "value": 12}' in out.stdout


def test_a_step_error_from_the_zipped_runtime_points_at_the_notebook_cell(tmp_path):
    (tmp_path / "values").mkdir()
    marshal.save([1, 2, 3], tmp_path / "values", "values")
    (tmp_path / "runtime").write_bytes(runtime_zip())
    script = STEP.replace("doubled = [v * factor for v in values]", "doubled = [v / 0 for v in values]")
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, str(tmp_path / "runtime"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert 'File "demo.ipynb cell 2", line 2' in out.stderr and "ZeroDivisionError" in out.stderr
    assert "nbmagic: step 'double': ZeroDivisionError in demo.ipynb cell 2" in out.stderr
    assert str(tmp_path / "runtime") not in out.stderr  # no runtime frames in what the user reads
