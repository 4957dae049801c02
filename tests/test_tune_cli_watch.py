"""`nbmagic tune --watch NAME` and `nbmagic tune --list`: the real command, run as a subprocess, following a real
local study that this test process drives (its trials held until the test lets them finish)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nbmagic.tune.experiment import TrialResult
from nbmagic.tune.local import LocalExperiment
from nbmagic.tune.space import ExperimentSpec, parse_param


def tune(*words: str) -> list[str]:
    return [sys.executable, "-m", "nbmagic.cli", "tune", *words]


def held_study(name: str, release, trials: int = 3) -> LocalExperiment:
    """A study driven by this process (in the store the command reads); its trials end once ``release`` exists."""

    def run(values):
        while not release.exists():
            time.sleep(0.01)
        return TrialResult(run_id=None, status="done", metrics={"loss": (values["c"] - 3) ** 2})

    spec = ExperimentSpec(
        (parse_param("c=double(0,6)"),), "loss", name=name, max_trials=trials, algorithm="random", seed=1
    )
    return LocalExperiment(spec, run, pipeline="p").start()


def watching(name: str) -> subprocess.Popen:
    """``nbmagic tune --watch NAME`` once it has said what it watches (SIGINT as in a terminal, not ignored)."""
    process = subprocess.Popen(
        tune("--watch", name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    process.first_line = process.stdout.readline()  # type: ignore[attr-defined]
    return process


@pytest.mark.slow
def test_watch_prints_a_line_per_trial_and_the_owners_summary(tmp_path):
    release = tmp_path / "go"
    exp = held_study("followed", release)
    try:
        process = watching("followed")
        first = process.first_line
        assert first.startswith("[followed] watching local experiment read-only, driven by "), first
        assert f"(PID {os.getpid()} " in first and first.rstrip().endswith(": 0 of 3 trials finished")
    finally:
        release.touch()
    exp.wait(30)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and err == "", err
    lines = out.splitlines()
    trials = {
        int(m.group(1)): m.group(2) for line in lines if (m := re.match(r"\[followed\] trial (\d+) loss=(\S+)", line))
    }
    assert trials == {t.number: f"{t.objective:.6g}" for t in exp.trials} and len(trials) == 3
    assert lines[-1] == f"[followed] {exp.summary()}"  # the watcher ends with what the owner saw
    assert exp.status == "succeeded"


@pytest.mark.slow
def test_list_names_each_study_its_driver_and_best(tmp_path):
    empty = subprocess.run(tune("--list"), capture_output=True, text=True, timeout=60)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "no local experiments in the store\n", "")
    release = tmp_path / "go"
    exp = held_study("listed", release, trials=2)
    try:
        running = subprocess.run(tune("--list"), capture_output=True, text=True, timeout=60)
    finally:
        release.touch()
    assert running.returncode == 0, running.stderr
    (row,) = running.stdout.splitlines()[1:]
    assert row.split()[:2] == ["listed", "0/2"] and f"(PID {os.getpid()} " in row and row.endswith(" -")
    exp.wait(30)
    done = subprocess.run(tune("--list"), capture_output=True, text=True, timeout=60)
    (row,) = done.stdout.splitlines()[1:]
    best = exp.best
    assert row.split() == ["listed", "2/2", "-", "trial", str(best.trial), f"loss={best.objective:.6g}"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "reason"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")]
)
def test_a_signal_ends_the_watch_with_one_line_and_the_experiment_goes_on(tmp_path, sig, code, reason):
    release = tmp_path / "go"
    exp = held_study("held", release)
    try:
        process = watching("held")
        assert process.first_line.startswith("[held] watching local experiment"), process.first_line
        process.send_signal(sig)
        out, err = process.communicate(timeout=60)
        assert process.returncode == code, err
        assert (
            err.startswith(f"[held] watch ended ({reason}); the experiment goes on, driven by ")
            and err.count("\n") == 1
        )
        assert f"(PID {os.getpid()} " in err and "Traceback" not in out + err
        assert not exp.done and exp.status == "running"  # the watcher neither stopped nor marked it
    finally:
        release.touch()
    assert exp.wait(30).status == "succeeded" and [t.status for t in exp.trials] == ["succeeded"] * 3


def test_watch_and_list_misuse_is_one_line(tmp_path):
    for words, expected in (
        (("--watch", "nope"), "nbmagic: no local experiment 'nope' in "),
        (("--watch", "../nope"), "nbmagic: '../nope' is not an experiment name"),
        (("--watch", "x", "--param", "c=double(0,1)"), "take no notebook or tuning options: --param given"),
        (("--watch", "x", "nb.ipynb", "--max-trials", "3"), "tuning options: NOTEBOOK, --max-trials given"),
        (("--list", "--watch", "x"), "tuning options: --list given"),
        (("--list", "--seed", "1"), "tuning options: --seed given"),
        ((), 'nbmagic: tune needs a NOTEBOOK and --param "NAME=TYPE(...)" (or --watch NAME, or --list)'),
        (("nb.ipynb",), "tune needs a NOTEBOOK and --param"),
    ):
        result = subprocess.run(tune(*words), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == "", (words, result.stdout)
        assert expected in result.stderr and result.stderr.count("\n") == 1, (words, result.stderr)
