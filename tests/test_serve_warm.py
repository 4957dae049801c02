"""The warm fork-server: servers forked from it serve, it and its servers die with the kernel, and it can be
turned off (servers are then their own ``python -m`` processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

KERNEL = textwrap.dedent("""
    import os, sys, time
    from sklearn.dummy import DummyClassifier
    from nbmagic.serve.api import serve
    model = DummyClassifier().fit([[0], [1]], [0, 1])
    first = serve(model, name="warm-a")
    second = serve(model, name="warm-b", split=True)
    assert first.predict([[1]]) in ([0], [1]) and second.predict([[1]], protocol="v2") in ([0], [1])
    from nbmagic.serve import warm
    kinds = {type(p.popen).__name__ for s in (first, second) for p in s.processes}
    pids = [p.popen.pid for s in (first, second) for p in s.processes]
    warm_pid = warm._WARM.popen.pid if warm._WARM is not None else 0
    print(",".join(sorted(kinds)), warm_pid, *pids, flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _run_kernel(tmp_path: Path, **env: str) -> tuple[str, list[int]]:
    """Start a kernel-like process that serves two models, SIGKILL it, and wait for what it started to go."""
    environment = dict(os.environ, NBMAGIC_HOME=str(tmp_path), PYTHONPATH=str(ROOT), **env)
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        kinds, *numbers = kernel.stdout.readline().split()
        pids = [int(n) for n in numbers if int(n)]
        assert pids and all(_alive(pid) for pid in pids)
    finally:
        kernel.send_signal(signal.SIGKILL)  # no atexit: only the processes' own safeguards can stop them
        kernel.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return kinds, [pid for pid in pids if _alive(pid)]


def test_servers_forked_by_the_warm_process_die_with_the_kernel(tmp_path):
    kinds, survivors = _run_kernel(tmp_path)
    assert kinds == "Forked"
    assert survivors == []


def test_warm_process_can_be_turned_off(tmp_path):
    kinds, survivors = _run_kernel(tmp_path, NBMAGIC_SERVE_WARM="0")
    assert kinds == "Popen"
    assert survivors == []
