"""`nbmagic tune NOTEBOOK ...`: a study from a terminal, a line per trial and the best at the end; killed
mid-experiment and started again, it resumes the same study (finished trials kept, the interrupted one again)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import nbformat
import pytest


def notebook(folder, epoch_seconds=0.0):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%%pipeline_parameters\nc = 1.0"),
        nbformat.v4.new_code_cell(
            "%%step train\nimport time\nfrom nbmagic import report\n"
            "for epoch in range(6):\n"
            f"    time.sleep({epoch_seconds})\n"
            "    loss = (c - 3.0) ** 2 + 1.0 / (epoch + 1)\n"
            "    report(loss=loss, step=epoch)"
        ),
        nbformat.v4.new_code_cell("%pipeline_metrics loss"),
    ]
    path = folder / "curves.ipynb"
    nbformat.write(nb, str(path))
    return path


def tune(path, *extra, **kw):
    argv = [sys.executable, "-m", "nbmagic.cli", "tune", str(path), "--param", "c=double(0,6)", "--algorithm"]
    return [*argv, "random", "--seed", "0", *extra]


@pytest.mark.slow
def test_tune_prints_a_line_per_trial_and_the_best(tmp_path):
    path = notebook(tmp_path)
    result = subprocess.run(
        tune(path, "--max-trials", "4", "--parallel", "2"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sorted(int(m.group(1)) for line in lines if (m := re.search(r"\] trial (\d+) loss=", line))) == [0, 1, 2, 3]
    assert "4 succeeded, 0 failed" in lines[-1] and "best trial" in lines[-1]


@pytest.mark.slow
def test_tune_usage_mistake_is_one_line(tmp_path):
    path = notebook(tmp_path)
    result = subprocess.run(tune(path, "--objective", "nope"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "'nope'" in result.stderr


@pytest.mark.slow
def test_a_killed_study_resumes_with_its_finished_trials(tmp_path):
    path = notebook(tmp_path, epoch_seconds=0.2)
    argv = tune(path, "--max-trials", "5")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in child.stdout:
        seen.append(line)
        if re.search(r"\] trial 1 loss=", line):
            break
    time.sleep(0.4)  # trial 2 is running
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(10)
    finished = [line for line in seen if re.search(r"\] trial \d+ loss=", line)]
    assert len(finished) == 2
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 kept from before" in again.stdout.splitlines()[0]
    assert "5 succeeded, 0 failed" in again.stdout.splitlines()[-1]
    numbers = sorted(
        int(m.group(1)) for line in again.stdout.splitlines() if (m := re.search(r"\] trial (\d+) ", line))
    )
    # trials 0 and 1 kept, trial 2 (interrupted) not counted as a trial; three new ones
    assert numbers[:2] == [0, 1] and 2 not in numbers and len(numbers) == 5
