"""A local module the step's module imports (and so on) is part of what reuse and the runner's cache key check."""

from __future__ import annotations

import sys

import pytest

from helpers.local_modules import local_module_files
from helpers.shell import run_ok
from nbmagic.run.cache_key import local_files, local_modules

MODULES = ("rvw_a15", "rvw_b15", "rvw_c15")


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """rvw_a15 imports rvw_b15, which imports rvw_c15 inside a function; returns a writer for rvw_c15."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "rvw_a15.py").write_text("import os\nimport rvw_b15\n\ndef f():\n    return rvw_b15.g()\n")
    (tmp_path / "rvw_b15.py").write_text("def g():\n    from rvw_c15 import VALUE\n    return VALUE\n")
    deepest = tmp_path / "rvw_c15.py"

    def write(value: int) -> None:
        deepest.write_text(f"VALUE = {value}\n")

    write(1)
    yield write
    for name in MODULES:
        sys.modules.pop(name, None)


def _restart(ip, *names):
    for name in names:
        ip.user_ns.pop(name, None)
    for name in MODULES:
        sys.modules.pop(name, None)


def test_local_imports_are_followed_to_every_local_file(chain, tmp_path):
    found = local_modules(("rvw_a15",))
    assert sorted(found) == ["rvw_a15", "rvw_b15", "rvw_c15"]  # os is the standard library: not followed
    assert sorted(local_files(("rvw_a15",))["rvw_a15"]) == sorted(str(tmp_path / f"{m}.py") for m in MODULES)


def test_editing_a_module_the_steps_module_imports_makes_the_cell_run_after_a_restart(chain, ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nimport rvw_a15\ny = rvw_a15.f()\n"
    run_ok(ip, cell)
    assert ip.user_ns["y"] == 1
    _restart(ip, "y", "rvw_a15")
    chain(2)
    capsys.readouterr()
    run_ok(ip, cell)
    assert ip.user_ns["y"] == 2 and "reused from run" not in capsys.readouterr().out
    _restart(ip, "y", "rvw_a15")
    run_ok(ip, cell)  # unchanged since: reused
    assert ip.user_ns["y"] == 2 and "s: reused from run" in capsys.readouterr().out


def test_editing_an_imported_module_after_the_kernel_loaded_it_is_named(chain, ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s\nimport rvw_a15\ny = rvw_a15.f()\n"
    run_ok(ip, cell)
    chain(3)  # the kernel still runs the rvw_c15 it imported
    capsys.readouterr()
    run_ok(ip, cell)
    assert ip.user_ns["y"] == 1
    assert "s: runs (cannot be reused: local module 'rvw_c15' changed on disk after" in capsys.readouterr().out


def test_compile_run_runs_a_step_again_when_a_module_its_module_imports_changes(chain, ip, monkeypatch):
    import nbmagic.run.pool as pool_module
    from nbmagic.run.pool import WorkerPool

    pool = WorkerPool()  # a worker started here, as a kernel started next to its notebook
    monkeypatch.setattr(pool_module, "_POOL", pool)
    try:
        run_ok(ip, "import rvw_a15")
        run_ok(ip, "%%step s\ny = float(rvw_a15.f())\n")
        run_ok(ip, "%pipeline_metrics y\n")
        first = run_ok(ip, "%compile_run --quiet")
        assert first.metrics == {"y": 1.0}, first.error
        assert run_ok(ip, "%compile_run --quiet").steps["s"].status == "cached"
        chain(4)
        again = run_ok(ip, "%compile_run --quiet")
        assert again.steps["s"].status == "done" and again.metrics == {"y": 4.0}, again.error
    finally:
        pool.close()


def _edit_and_rerun(ip, capsys, tmp_path, cell, path, text, modules):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    for name in modules:
        sys.modules.pop(name, None)
    ip.user_ns.pop("y", None)
    path.write_text(text)
    capsys.readouterr()
    run_ok(ip, cell)
    return capsys.readouterr().out


def test_an_edited_module_of_a_local_namespace_package_makes_the_cell_run(ip, capsys, tmp_path, monkeypatch):
    cell = "%%step s\nfrom rvwns15 import mod\ny = mod.V\n"
    modules = ("rvwns15", "rvwns15.mod")
    with local_module_files(tmp_path, monkeypatch, {"rvwns15/mod.py": "V = 1\n"}, modules):
        said = _edit_and_rerun(ip, capsys, tmp_path, cell, tmp_path / "rvwns15" / "mod.py", "V = 2\n", modules)
        assert ip.user_ns["y"] == 2, said


def test_a_module_imported_by_import_module_with_a_constant_name_is_followed(ip, capsys, tmp_path, monkeypatch):
    files = {
        "rvw_t15.py": "import importlib\ndef f():\n    return importlib.import_module('rvw_d15').V\n",
        "rvw_d15.py": "V = 1\n",
    }
    cell = "%%step s\nimport rvw_t15\ny = rvw_t15.f()\n"
    with local_module_files(tmp_path, monkeypatch, files, ("rvw_t15", "rvw_d15")):
        said = _edit_and_rerun(ip, capsys, tmp_path, cell, tmp_path / "rvw_d15.py", "V = 2\n", ("rvw_t15", "rvw_d15"))
        assert ip.user_ns["y"] == 2, said
        assert "rvw_d15" in local_modules(("rvw_t15",))


def test_a_module_named_at_run_time_makes_the_cell_run_with_one_line(ip, capsys, tmp_path, monkeypatch):
    files = {"rvw_v15.py": "def f(name):\n    return __import__(name).V\n", "rvw_w15.py": "V = 1\n"}
    cell = "%%step s\nimport rvw_v15\ny = rvw_v15.f('rvw_w15')\n"
    with local_module_files(tmp_path, monkeypatch, files, ("rvw_v15", "rvw_w15")):
        said = _edit_and_rerun(ip, capsys, tmp_path, cell, tmp_path / "rvw_w15.py", "V = 2\n", ("rvw_v15", "rvw_w15"))
        assert ip.user_ns["y"] == 2, said
        assert "s: runs (cannot be reused: " in said and "imports a module named at run time" in said
