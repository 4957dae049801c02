"""A local study across processes: the kernel that drives it owns it (the store names its kernel, PID and start
time), another process is refused with one line naming the owner; a killed kernel's study is taken over and
resumed by a new kernel (finished trials kept, the interrupted one asked again)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers.kernel import execute_ok, start_kernel
from nbmagic.tune.local import LocalExperiment
from nbmagic.tune.ownership import StudyLock, alive, read_owner
from nbmagic.tune.space import ExperimentSpec, TuneError, parse_param

CELLS = (
    "%load_ext nbmagic",
    "%%pipeline_parameters\nc = 1.0",
    "%%step train\nimport time\ntime.sleep(0.5)\nloss = (c - 3.0) ** 2",
    "%pipeline_metrics loss",
    'exp = %katib --param "c=double(0,6)" --algorithm random --seed 0 --max-trials 6 --name shared-study --quiet',
)


def kernel():
    manager, client = start_kernel()
    for cell in CELLS:
        execute_ok(client, cell)
    return manager, client


def succeeded(client) -> int:
    return int(execute_ok(client, "print(sum(t.status == 'succeeded' for t in exp.trials))").strip())


@pytest.mark.slow
def test_a_study_is_owned_by_its_kernel_and_resumed_after_the_kernel_is_killed(nbmagic_home):
    owner_file = nbmagic_home / "tune" / "shared-study.owner"
    manager, client = kernel()
    try:
        pid = int(execute_ok(client, "import os; print(os.getpid())"))
        owner = read_owner(owner_file)
        assert owner["pid"] == pid and owner["kernel"].startswith("kernel ") and alive(owner)
        # another process on the same store is refused, with one line naming the kernel
        spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="shared-study", max_trials=6)
        with pytest.raises(TuneError) as refused:
            LocalExperiment(spec, lambda values: None, pipeline="p").start()
        assert f"PID {pid}" in str(refused.value) and "\n" not in str(refused.value)
        deadline = time.time() + 120
        while succeeded(client) < 2:
            assert time.time() < deadline, "no trial finished"
            time.sleep(0.2)
        before = succeeded(client)
        os.kill(pid, signal.SIGKILL)  # the kernel dies mid-experiment: a trial is running
        gone = time.time() + 10
        while manager.is_alive():
            assert time.time() < gone, "the killed kernel is still alive"
            time.sleep(0.05)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert not alive(read_owner(owner_file))  # its owner record is left behind, and recognised as dead
    manager, client = kernel()
    try:
        resumed = int(execute_ok(client, "print(exp.resumed)"))
        assert resumed >= before
        execute_ok(client, "exp.wait(180)")
        assert execute_ok(client, "print(exp.status, len(exp.trials), exp.spec.max_trials)").split() == [
            "succeeded",
            "6",
            "6",
        ]
        statuses = execute_ok(client, "print(*[t.status for t in exp.trials])").split()
        assert statuses == ["succeeded"] * 6
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert read_owner(owner_file) is None  # released when the experiment ended


def test_a_dead_owner_recorded_with_another_start_time_is_recognised(tmp_path):
    lock = StudyLock(tmp_path / "study", "study").acquire()
    mine = read_owner(lock.path)
    assert alive(mine)
    assert not alive({**mine, "start": "1"})  # the same PID started at another time: reused, the owner is gone
    lock.release()
    assert read_owner(lock.path) is None
