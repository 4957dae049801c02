"""The `nbmagic` command from a saved notebook, without Jupyter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def nbmagic(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_run_a_saved_notebook_then_rerun_from_the_cache(tmp_path):
    notebook = tmp_path / "quickstart.ipynb"
    shutil.copy(QUICKSTART, notebook)
    first = nbmagic("run", str(notebook), "--param", "n_estimators=20")
    assert first.returncode == 0, first.stderr
    assert "train_forest: done" in first.stdout and "accuracy=0.9" in first.stdout
    second = nbmagic("run", str(notebook), "--param", "n_estimators=20", "--quiet")
    assert second.returncode == 0
    assert "5/5 steps cached" in second.stdout


def test_compile_writes_kfp_ir_yaml_and_readable_dsl(tmp_path):
    result = nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "p.yaml"))
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"C", "n_estimators", "test_size", "seed"}
    assert "nbmagic-runtime-package" in spec["root"]["dag"]["tasks"]  # the runtime the python:3.x image lacks
    assert result.stdout.startswith(f"wrote {tmp_path / 'p.yaml'} (") and "kB, 5 steps)" in result.stdout
    assert spec["root"]["inputDefinitions"]["parameters"]["n_estimators"]["parameterType"] == "NUMBER_INTEGER"
    assert nbmagic("compile", str(QUICKSTART), "-o", str(tmp_path / "p.py")).returncode == 0
    assert "@dsl.pipeline" in (tmp_path / "p.py").read_text()


def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path):
    result = nbmagic("run", str(QUICKSTART), "--param", "n_estimators=many")
    assert result.returncode == 2
    assert result.stderr.strip() == "nbmagic: parameter 'n_estimators' is int; 'many' is not a valid int"
    missing = nbmagic("run", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2 and "no notebook" in missing.stderr


def test_a_relative_store_path_is_relative_to_where_the_command_runs(tmp_path):
    import os

    notebook = tmp_path / "nb" / "quickstart.ipynb"
    notebook.parent.mkdir()
    shutil.copy(QUICKSTART, notebook)
    env = {**os.environ, "NBMAGIC_HOME": "relative-store"}
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "run", str(notebook), "--quiet", "--param", "n_estimators=10"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "relative-store" / "store" / "index.sqlite").exists()
    assert not (notebook.parent / "relative-store").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-m", "nbmagic.cli", "gc", "--show-policy", "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # as `| head` does, before the command prints anything
    err = child.stderr.read().decode()
    assert child.wait(60) == 141 and err == ""


def test_a_broken_pipe_that_is_not_stdout_is_one_line(monkeypatch, capsys, tmp_path):
    import os

    import nbmagic.cli as cli

    def other_pipe(args):  # a command whose own pipe (not our stdout) loses its reader
        read, write = os.pipe()
        os.close(read)
        try:
            os.write(write, b"x")
        finally:
            os.close(write)
        return 0

    monkeypatch.setattr(cli, "cmd_gc", other_pipe)
    assert cli.main(["gc", "--store", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nbmagic: ") and "Broken pipe" in err and err.count("\n") == 1


def test_a_worker_that_died_unseen_is_one_line_not_a_broken_pipe(tmp_path):
    import time

    import pytest

    from nbmagic.errors import NbMagicError
    from nbmagic.run.pool import WorkerPool

    pool = WorkerPool()
    process = pool._ensure()
    try:
        # while another thread waits on the worker, poll() cannot see it exit: the window between a worker's
        # death and the next write to it, held open here
        with process._waitpid_lock:
            process.kill()
            stat = Path(f"/proc/{process.pid}/stat")
            deadline = time.time() + 30
            while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # dead: its end of the pipe is closed
                assert time.time() < deadline
                time.sleep(0.01)
            with pytest.raises(NbMagicError, match=r"^the step worker died \(pid \d+\)"):
                pool.submit(str(tmp_path / "spec.json"))
            assert pool._pending == {}
            pool.kill("1")  # stopping a task of a dead worker is quiet: the task died with it
    finally:
        pool.close()


def test_main_leaves_the_sigterm_handler_as_it_found_it_and_runs_outside_the_main_thread(tmp_path, capsys):
    import signal
    import threading

    from nbmagic.cli import main

    def mine(signum, frame):  # the embedding program's own handler
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["gc", "--show-policy", "--store", str(tmp_path / "store")]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        codes = []
        thread = threading.Thread(target=lambda: codes.append(main(["gc", "--show-policy", "--store", str(tmp_path)])))
        thread.start()
        thread.join(60)
        assert codes == [0] and signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().out == "automatic gc policy: none\n" * 2
