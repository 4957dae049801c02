"""Reuse never gives a value other than running the cell would: carried values, secrets, imports."""

from __future__ import annotations

import json

from helpers.shell import run_ok
from nbmagic.store.runs import RunStore


def test_a_carried_value_changed_by_a_later_cell_makes_the_step_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 2")
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20
    run_ok(ip, "k = 3")  # a later cell
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")  # the step cell run again: running it gives 30
    assert ip.user_ns["y"] == 30
    assert "not the value its stored results were computed with" in capsys.readouterr().out
    # k = 3 is not what the notebook's cells before the step give it: a run would compute 20 under the same key
    run = run_ok(ip, "%compile_run --quiet")
    assert run.value("y") == 20
    # after a restart with k = 2 the step's stored results are reused again
    for name in ("y", "k"):
        ip.user_ns.pop(name)
    run_ok(ip, "k = 2")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20
    assert "s: reused from run" in capsys.readouterr().out


def test_a_run_stores_the_carried_values_its_results_were_computed_with(ip, capsys):
    run_ok(ip, "k = 2")
    run_ok(ip, "%%step s\ny = k * 10\n")
    run = run_ok(ip, "%compile_run --quiet")
    entry = RunStore().cache_get(run.steps["s"].cache_key)
    assert entry is not None and set(entry.carried) == {"k"} and entry.carried["k"]
    # a cell reuses it only while the kernel holds the same k
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "k = 5")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 50
    run_ok(ip, "k = 2")
    capsys.readouterr()
    run_ok(ip, "%%step s\ny = k * 10\n")
    assert ip.user_ns["y"] == 20 and "s: reused from run" in capsys.readouterr().out


def test_a_secret_read_by_a_step_is_never_stored_and_masked_in_its_log(ip, nbmagic_home, monkeypatch, capsys):
    token = "tok-4f9c2a7e1b"
    monkeypatch.setenv("API_TOKEN", token)
    run_ok(ip, "%pipeline_config --reuse")
    cell = "%%step s --secret creds:token=API_TOKEN\nimport os\ntok = os.environ['API_TOKEN']\nprint('token', tok)\nn = 3\n"
    run_ok(ip, cell)
    assert "variable 'tok' holds a secret" in capsys.readouterr().out
    run = run_ok(ip, "%compile_run --quiet")
    assert run.steps["s"].status == "done"  # not taken from a cache entry holding the secret
    logs = list((nbmagic_home / "store").rglob("s.log"))
    assert logs
    for path in logs:
        assert path.stat().st_mode & 0o077 == 0, path
    for path in (nbmagic_home / "store").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert all(p.read_text().startswith("token ***") for p in logs), [p.read_text() for p in logs]


def test_a_cell_reusing_a_runs_results_binds_its_imports_too(ip, capsys):
    cell = "%%step s\nimport colorsys\nimport fractions as fr\nh = colorsys.rgb_to_hsv(1.0, 0.0, 0.0)\n"
    run_ok(ip, cell)
    run_ok(ip, "%compile_run --quiet")  # the run's cache entry keeps no modules
    for name in ("colorsys", "fr", "h"):
        ip.user_ns.pop(name, None)
    run_ok(ip, "%pipeline_config --reuse")
    capsys.readouterr()
    run_ok(ip, cell)
    assert "s: reused from run" in capsys.readouterr().out
    assert ip.user_ns["colorsys"].__name__ == "colorsys" and ip.user_ns["fr"].__name__ == "fractions"
    assert ip.user_ns["h"] == (0.0, 1.0, 1.0)


def test_a_name_the_stored_results_lack_makes_the_cell_run(ip, capsys):
    cell = "%%step s\nimport importlib\nmod = importlib.import_module('colorsys')\nv = 1\n"
    run_ok(ip, cell)
    run_ok(ip, "%compile_run --quiet")  # a run keeps no module, and this one no import statement binds
    for name in ("mod", "v", "importlib"):
        ip.user_ns.pop(name, None)
    run_ok(ip, "%pipeline_config --reuse")
    capsys.readouterr()
    run_ok(ip, cell)
    out = capsys.readouterr().out
    assert "reused from run" not in out
    assert "s: runs (cannot be reused: its stored results do not hold 'mod', which it assigns)" in out
    assert ip.user_ns["mod"].__name__ == "colorsys" and ip.user_ns["v"] == 1


def test_input_file_hashes_name_their_algorithm_and_are_checked_with_it(tmp_path, monkeypatch):
    from nbmagic.runtime import files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.csv").write_text("a b c\n")
    sha = files.file_hashes(["raw.csv"], "sha256")["raw.csv"]
    xxh = files.file_hashes(["raw.csv"], "xxh3")["raw.csv"]
    assert sha.startswith("sha256:") and xxh.startswith("xxh3:")
    assert files.check_files({"raw.csv": sha}) is None and files.check_files({"raw.csv": xxh}) is None
    monkeypatch.setattr(files, "default_algorithm", lambda: "sha256")  # an image without xxhash
    assert files.check_files({"raw.csv": xxh}) == (
        "--inputs raw.csv cannot be checked here: it was hashed with xxh3 and this image has no xxhash "
        "(install xxhash in the image)"
    )
    (tmp_path / "raw.csv").write_text("a b c d\n")
    assert "is not the file the pipeline was compiled with" in files.check_files({"raw.csv": sha})
    missing = files.check_files({"gone.csv": sha})
    assert f"(relative to {tmp_path})" in missing


def test_the_cluster_note_says_where_relative_paths_resolve_and_what_a_cache_hit_skips():
    from nbmagic.compile.inputs import cluster_inputs_note
    from nbmagic.pipeline.cells import RawCell, read_cells
    from nbmagic.pipeline.plan import build_plan

    plan = build_plan(read_cells([RawCell("%%step read --inputs raw.csv\nn = 1\n", 1, "cell 1", "id1")]))
    note = cluster_inputs_note(plan)
    assert "relative path resolving against the pod's working folder (/ in python:3.x images" in note
    assert "part of KFP's cache key" in note and "a KFP cache hit runs nothing and checks nothing" in note


def test_the_executor_refuses_a_step_spec_it_cannot_honour_in_full(capsys):
    import pytest

    from nbmagic.runtime import executor

    newer = {"version": executor.SPEC_VERSION + 1, "step": "s", "label": "cell 1"}
    with pytest.raises(SystemExit) as stop:
        executor.main(["{}", json.dumps(newer), "x = 1", ""])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"step spec version {executor.SPEC_VERSION + 1}" in err
    unknown = {"version": executor.SPEC_VERSION, "step": "s", "label": "cell 1", "mounts": {}}
    assert "asks for 'mounts'" in executor.spec_problem(unknown)
    assert executor.spec_problem({"version": executor.SPEC_VERSION, "step": "s", "label": "l", "files": {}}) is None


def test_results_computed_with_other_carried_values_are_reused_by_a_kernel_holding_them(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "history = []")
    run_ok(ip, "%%step a\nhistory.append(1)\n")  # a step over two cells changes a carried value in place
    run_ok(ip, "%%step a\nn = 1\n")
    run_ok(ip, "%%step b\nlogged = len(history)\n")
    assert ip.user_ns["logged"] == 1
    for name in ("history", "n", "logged"):
        ip.user_ns.pop(name)
    run_ok(ip, "history = []")
    capsys.readouterr()
    run_ok(ip, "%%step a\nhistory.append(1)\n")
    run_ok(ip, "%%step a\nn = 1\n")
    run_ok(ip, "%%step b\nlogged = len(history)\n")
    out = capsys.readouterr().out
    assert "b: reused from run" in out and ip.user_ns["logged"] == 1
