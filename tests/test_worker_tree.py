"""A step's leftover processes end when that step ends, also while other steps are still running.

The step worker finds them by walking its own process subtree (it is a child subreaper); these tests run
real steps that start real processes which leave the step's process group and session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbmagic
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


# a step whose helper (in the step's group) starts a grandchild in its own session and the step ends at once:
# killing the group re-parents the grandchild to the worker while the worker's subtree is being walked
RACE = r"""
import os, signal, sys, time
from nbmagic.run import worker

worker._SUBREAPER = worker._prctl(worker._PR_SET_CHILD_SUBREAPER, 1)
assert worker._SUBREAPER, "not a subreaper"
walks = []
subtree = worker._subtree
def counted():
    found = subtree()
    walks.append(found is not None)
    return found
worker._subtree = counted

def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

other = os.fork()  # another step, running throughout
if other == 0:
    time.sleep(600)
    os._exit(0)
missed = 0
for i in range(int(sys.argv[1])):
    token = f"race{i}"
    r, w = os.pipe()
    step = os.fork()
    if step == 0:
        os.setpgid(0, 0)
        os.environ[worker.TOKEN_ENV] = token
        if os.fork() == 0:  # a helper in the step's group
            if os.fork() == 0:  # its child, in a session of its own
                os.setsid()
                os.set_inheritable(w, True)  # it tells its pid once it runs a program (environment then readable)
                os.execvp("sh", ["sh", "-c", f"echo $$ >&{w}; exec sleep 60"])
            os.execvp("sleep", ["sleep", "61"])
        os._exit(0)
    os.close(w)
    daemon = int(os.read(r, 100).split()[0])
    os.close(r)
    os.waitpid(step, 0)
    worker._kill_tree(step, token)
    deadline = time.time() + 0.3
    while alive(daemon) and time.time() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.005)
    if alive(daemon):
        missed += 1
        os.kill(daemon, signal.SIGKILL)
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
os.kill(other, signal.SIGKILL)
print(missed, len(walks), all(walks))
"""


def test_a_grandchild_reparented_while_the_tree_is_walked_is_still_killed():
    import subprocess

    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("process trees are followed on Linux")
    runs = 200
    root = Path(nbmagic.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", RACE, str(runs)], cwd=root, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    missed, walks, walked = out.stdout.split()
    assert walked == "True" and int(walks) >= runs  # the subtree walk was used, never the /proc-wide fallback
    assert int(missed) == 0, f"{missed} of {runs} leftovers survived their step"
