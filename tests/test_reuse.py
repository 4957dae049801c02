"""Interactive reuse: %%step cells with unchanged code and inputs load their results from the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.shell import run_cell, run_ok
from nbmagic.errors import PipelineError
from nbmagic.pipeline.cells import parse_config_line, parse_step_line
from nbmagic.pipeline.settings import merge
from nbmagic.store.runs import RunStore

LOAD = "%%step load\nimport numpy as np\nopen(marker, 'a').write('load ')\nX = np.arange(200_000.0)\nprint('loaded', len(X))\n"
TRANSFORM = "%%step transform\nopen(marker, 'a').write('transform ')\nY = X * scale\nprint('transformed')\n"
SUMMARY = "%%step summary\nopen(marker, 'a').write('summary ')\ntotal = float(Y.sum())\n"


def notebook(ip, marker, scale=2.0, config="%pipeline_config --reuse"):
    """The notebook's cells in order, as a Run All would run them; returns what printed."""
    if config:
        run_ok(ip, config)
    run_ok(ip, f"%%pipeline_parameters\nscale = {scale}\nmarker = {str(marker)!r}\n")
    printed = {}
    for name, source in (("load", LOAD), ("transform", TRANSFORM), ("summary", SUMMARY)):
        result = ip.run_cell(source, store_history=True)
        assert result.success, result
        printed[name] = source
    return printed


def restart(ip):
    """What a kernel restart loses: the values (the recorded cells come back as the cells run again)."""
    for name in ("X", "Y", "total", "np"):
        ip.user_ns.pop(name, None)


def ran(marker) -> list[str]:
    text = marker.read_text() if marker.exists() else ""
    marker.write_text("")
    return text.split()


def test_reuse_and_inputs_flags_parse_and_merge():
    name, _, settings = parse_step_line("load --reuse --inputs data/raw.csv data/raw.csv other.csv")
    assert (name, settings.reuse, settings.inputs) == ("load", True, ("data/raw.csv", "other.csv"))
    assert parse_step_line("load --no-reuse")[2].reuse is False
    assert parse_step_line("load")[2].reuse is None
    with pytest.raises(PipelineError, match="--reuse and --no-reuse"):
        parse_step_line("load --reuse --no-reuse")
    pipeline = parse_config_line("--reuse --inputs shared.csv")
    assert merge(pipeline, parse_step_line("load")[2]).reuse is True
    assert merge(pipeline, parse_step_line("load --no-reuse")[2]).reuse is False
    assert merge(pipeline, parse_step_line("load --inputs a.csv")[2]).inputs == ("shared.csv", "a.csv")


def test_restart_then_run_all_reuses_every_unchanged_step(ip, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    assert ran(marker) == ["load", "transform", "summary"]
    first = ip.user_ns["total"]
    capsys.readouterr()
    restart(ip)
    notebook(ip, marker)
    out = capsys.readouterr().out
    assert ran(marker) == []  # no cell body ran
    assert ip.user_ns["total"] == first
    assert np.array_equal(ip.user_ns["X"], np.arange(200_000.0))
    assert "loaded 200000\nload: reused from run " in out  # the print replayed, then the one line
    assert "(code and inputs unchanged; " in out and "— %%step load --no-reuse to run it" in out
    assert "transformed\ntransform: reused from run " in out
    assert "summary: reused from run " in out


def test_a_changed_parameter_runs_only_the_steps_from_the_one_that_reads_it(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker, scale=2.0)
    ran(marker)
    restart(ip)
    notebook(ip, marker, scale=3.0)
    assert ran(marker) == ["transform", "summary"]
    assert ip.user_ns["total"] == float((np.arange(200_000.0) * 3.0).sum())


def test_reuse_is_off_by_default_and_no_reuse_wins_over_the_pipeline_setting(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker, config=None)
    restart(ip)
    notebook(ip, marker, config=None)
    assert ran(marker) == ["load", "transform", "summary"] * 2
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, LOAD)
    ran(marker)
    restart(ip)
    run_ok(ip, LOAD.replace("%%step load", "%%step load --no-reuse"))
    assert ran(marker) == ["load"]


def test_compile_run_after_an_interactive_run_all_takes_what_the_kernel_computed(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    ran(marker)
    run = run_ok(ip, "%compile_run --quiet")
    assert {n: s.status for n, s in run.steps.items()} == {"load": "cached", "transform": "cached", "summary": "cached"}
    assert run.value("total") == ip.user_ns["total"]
    assert ran(marker) == []
    changed = run_ok(ip, "%compile_run --quiet --param scale=5")
    assert [changed.steps[n].status for n in ("load", "transform", "summary")] == ["cached", "done", "done"]


def test_a_cell_reuses_what_compile_run_computed(ip, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    run = run_ok(ip, "%compile_run --quiet --param scale=4")
    assert run.steps["transform"].status == "done"
    ran(marker)
    capsys.readouterr()
    restart(ip)
    notebook(ip, marker, scale=4.0)
    assert ran(marker) == []
    assert f"transform: reused from run {run.id}" in capsys.readouterr().out
    assert ip.user_ns["total"] == run.value("total")


def test_an_input_file_joins_the_key_in_the_kernel_and_in_the_runner(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    data = tmp_path / "raw.csv"
    data.write_text("1,2,3\n")
    run_ok(ip, f"%%pipeline_parameters\nmarker = {str(marker)!r}\npath = {str(data)!r}\n")
    run_ok(ip, "%pipeline_config --reuse")
    cell = f"%%step read --inputs {data}\nopen(marker, 'a').write('read ')\nrows = open(path).read().split(',')\n"
    run_ok(ip, cell)
    run_ok(ip, cell)
    assert ran(marker) == ["read"]
    data.write_text("4,5,6,7\n")
    run_ok(ip, cell)
    assert ran(marker) == ["read"] and len(ip.user_ns["rows"]) == 4
    assert run_ok(ip, "%compile_run --quiet").steps["read"].status == "cached"
    data.write_text("8\n")
    assert run_ok(ip, "%compile_run --quiet").steps["read"].status == "done"
    data.unlink()
    ran(marker)
    result = run_cell(ip, cell)  # a missing input file: the cell simply runs (and fails on its own)
    assert "No such file or directory" in str(result.error_in_exec)
    assert ran(marker) == ["read"]


def test_a_value_that_cannot_be_hashed_makes_the_cell_simply_run(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    run_ok(ip, f"%%pipeline_parameters\nmarker = {str(marker)!r}\n")
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step make\nimport threading\nlock = threading.Lock()\nn = 3\n")
    use = "%%step use\nopen(marker, 'a').write('use ')\nheld = lock.locked() or n\n"
    run_ok(ip, use)
    run_ok(ip, use)
    assert ran(marker) == ["use", "use"]
    assert ip.user_ns["held"] == 3


def test_in_place_changes_to_an_input_are_seen(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    ran(marker)
    run_ok(ip, "X[0] = 1e9")  # an ordinary cell changes the array the transform reads
    run_ok(ip, TRANSFORM)
    assert ran(marker) == ["transform"]
    assert ip.user_ns["Y"][0] == 2e9


def test_a_reused_cell_is_recorded_as_a_reuse_of_the_earlier_execution(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    restart(ip)
    notebook(ip, marker)
    listing = str(run_ok(ip, "%runs"))  # the next cell sees the records of the reused cells, written meanwhile
    store = RunStore()
    sessions = [r for r in store.list_runs() if r.kind == "notebook"]
    assert len(sessions) == 2  # one record per pass over the notebook, not a run per cell
    assert sessions[1].cached == 0 and sessions[0].cached == 3
    first = {row["step"]: row for row in store.step_rows(sessions[1].id)}
    assert Path(first["load"]["log"]).read_text() == "loaded 200000\n"
    rows = {row["step"]: row for row in store.step_rows(sessions[0].id)}
    assert rows["load"]["state"] == "cached" and rows["load"]["cached"] == 1
    from nbmagic.store.lineage import executions

    reused = {e.step: e.reused_execution for e in executions(store, sessions[0].id)}
    assert reused["load"] == first["load"]["id"]
    assert sessions[0].id in listing
    trace = str(run_ok(ip, f"%lineage total --run {sessions[0].id}"))
    assert f"reused run {sessions[1].id} step summary" in trace


def test_a_step_spread_over_several_cells_simply_runs(ip, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    run_ok(ip, f"%%pipeline_parameters\nmarker = {str(marker)!r}\n")
    run_ok(ip, "%pipeline_config --reuse")
    first = "%%step both\nopen(marker, 'a').write('one ')\na = 1\n"
    second = "%%step both\nopen(marker, 'a').write('two ')\nb = a + 1\n"
    for _ in range(2):
        run_ok(ip, first)
        run_ok(ip, second)
    assert ran(marker) == ["one", "two", "one", "two"]
    assert ip.user_ns["b"] == 2
    assert "both: runs (cannot be reused: the step spans several cells)" in capsys.readouterr().out


def test_a_cell_run_again_in_the_same_kernel_keeps_every_name_it_binds(ip, tmp_path):
    marker = tmp_path / "ran.txt"
    notebook(ip, marker)
    run_ok(ip, LOAD + "extra = 1\n")  # changed code: runs; `np` is bound again to the same module object
    restart(ip)
    ip.user_ns.pop("extra", None)
    run_ok(ip, LOAD + "extra = 1\n")
    assert ran(marker) == ["load", "transform", "summary", "load"]
    assert ip.user_ns["np"].__name__ == "numpy" and ip.user_ns["extra"] == 1


def test_nbmagic_run_takes_what_the_notebook_computed(ip, tmp_path, monkeypatch):
    import subprocess
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    marker = tmp_path / "ran.txt"
    sources = [
        "%pipeline_config --reuse",
        f"%%pipeline_parameters\nscale = 2.0\nmarker = {str(marker)!r}\n",
        LOAD,
        TRANSFORM,
        SUMMARY,
    ]
    path = tmp_path / "saved.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(s) for s in sources]), path)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    for source in sources:
        run_ok(ip, source)
    assert ran(marker) == ["load", "transform", "summary"]
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "run", str(path), "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "3/3 steps cached" in done.stdout
    assert ran(marker) == []


def test_input_folders_hash_every_file_and_a_missing_input_is_named(tmp_path):
    from nbmagic.errors import NbMagicError
    from nbmagic.run.cache_key import file_hashes

    folder = tmp_path / "raw"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_text("1")
    (folder / "sub" / "b.csv").write_text("2")
    before = file_hashes((str(folder),), "load")
    assert file_hashes((str(folder),), "load") == before
    (folder / "sub" / "b.csv").write_text("3")
    assert file_hashes((str(folder),), "load") != before
    (folder / "sub" / "b.csv").rename(folder / "b.csv")  # same bytes, another place: another key
    moved = file_hashes((str(folder),), "load")
    (folder / "b.csv").rename(folder / "sub" / "b.csv")
    assert moved != file_hashes((str(folder),), "load")
    with pytest.raises(NbMagicError, match=r"step 'load' --inputs .*missing.csv: no such file or folder"):
        file_hashes((str(tmp_path / "missing.csv"),), "load")
