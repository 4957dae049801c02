"""A step's leftover processes end when that step ends, also while other steps are still running.

The step worker finds them by walking its own process subtree (it is a child subreaper); these tests run
real steps that start real processes which leave the step's process group and session.
"""

from __future__ import annotations

import os
import sys

from helpers.shell import run_ok

KERNEL = os.getpid()

# a step that starts a process in a new session and a double-forked daemon, and records their pids
SPAWN = (
    "%%step spawn\n"
    "import os, subprocess, sys\n"
    f"if os.getpid() != {KERNEL}:\n"
    "    session = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
    "    daemon = subprocess.run([sys.executable, '-c', 'import os, time\\n"
    "if os.fork():\\n    os._exit(0)\\nos.setsid()\\nif os.fork():\\n    os._exit(0)\\n"
    "print(os.getpid(), flush=True)\\nos.close(1)\\nos.close(2)\\ntime.sleep(300)'], capture_output=True, text=True)\n"
    "    open({pids!r}, 'w').write(f'{{session.pid}} {{daemon.stdout.split()[0]}}')\n"
    "    del session, daemon\n"
    "a = 1\n"
)

# a step running beside it: waits for the pids, then watches them while it is itself still running
WATCH = (
    "%%step watch\n"
    "import os, time\n"
    "gone = 0\n"
    f"if os.getpid() != {KERNEL}:\n"
    "    deadline = time.time() + 20\n"
    "    while not os.path.exists({pids!r}) and time.time() < deadline:\n"
    "        time.sleep(0.02)\n"
    "    pids = [int(p) for p in open({pids!r}).read().split()]\n"
    "    def alive(pid):\n"
    "        try:\n"
    "            state = open(f'/proc/{{pid}}/stat').read().rsplit(')', 1)[1].split()[0]\n"
    "        except OSError:\n"
    "            return False\n"
    "        return state != 'Z'\n"
    "    deadline = time.time() + 10\n"
    "    while any(alive(p) for p in pids) and time.time() < deadline:\n"
    "        time.sleep(0.02)\n"
    "    gone = int(not any(alive(p) for p in pids))\n"
)


def test_leftovers_end_with_their_step_while_another_step_runs(ip, tmp_path):
    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("process trees are followed on Linux")
    pids = tmp_path / "pids"
    run_ok(ip, SPAWN.format(pids=str(pids)))
    run_ok(ip, WATCH.format(pids=str(pids)))
    run_ok(ip, "%pipeline_metrics a gone\n")
    run = run_ok(ip, "%compile_run --quiet --no-cache")
    assert run.status == "done"
    assert run.metrics["gone"] == 1.0  # the daemon and the new-session process ended while watch still ran
