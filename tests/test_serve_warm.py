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

from helpers.processes import running

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


def _run_kernel(tmp_path: Path, **env: str) -> tuple[str, list[int]]:
    """Start a kernel-like process that serves two models, SIGKILL it, and wait for what it started to go."""
    environment = dict(os.environ, NBMAGIC_HOME=str(tmp_path), PYTHONPATH=str(ROOT), **env)
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        kinds, *numbers = kernel.stdout.readline().split()
        pids = [int(n) for n in numbers if int(n)]
        assert pids and all(running(pid) for pid in pids)
    finally:
        kernel.send_signal(signal.SIGKILL)  # no atexit: only the processes' own safeguards can stop them
        kernel.wait()
    deadline = time.monotonic() + 15
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return kinds, [pid for pid in pids if running(pid)]


def test_servers_forked_by_the_warm_process_die_with_the_kernel(tmp_path):
    kinds, survivors = _run_kernel(tmp_path)
    assert kinds == "Forked"
    assert survivors == []


def test_warm_process_can_be_turned_off(tmp_path):
    kinds, survivors = _run_kernel(tmp_path, NBMAGIC_SERVE_WARM="0")
    assert kinds == "Popen"
    assert survivors == []


def test_a_kernel_starts_the_warm_process_at_load_ext_and_leaves_nothing_behind(tmp_path):
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, NBMAGIC_HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    manager, kernel = start_new_kernel(kernel_name="python3", env=env, cwd=str(tmp_path))
    printed: list[str] = []

    def run(code: str) -> None:
        reply = kernel.execute_interactive(
            code,
            timeout=120,
            output_hook=lambda msg: (
                printed.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None
            ),
        )
        assert reply["content"]["status"] == "ok", reply["content"]

    try:
        run("%load_ext nbmagic")
        run(
            "import time\nfrom nbmagic.serve import warm\ndeadline = time.time() + 60\n"
            "while warm._WARM is None and time.time() < deadline: time.sleep(0.05)\n"
            "print('warm', warm._WARM.popen.pid if warm._WARM else 0)"
        )
        run("from sklearn.dummy import DummyClassifier\nmodel = DummyClassifier().fit([[0], [1]], [0, 1])")
        run(
            "server = %serve model\nprint('server', type(server.processes[0].popen).__name__, server.processes[0].popen.pid)"
        )
        run("print('predict', server.predict([[1]]))")
    finally:
        manager.shutdown_kernel(now=False)
        kernel.stop_channels()
    words = " ".join(printed).split()
    warm_pid = int(words[words.index("warm") + 1])
    kind, server_pid = words[words.index("server") + 1], int(words[words.index("server") + 2])
    assert warm_pid and kind == "Forked"
    assert words[words.index("predict") + 1] in ("[0]", "[1]")
    deadline = time.monotonic() + 15
    while (running(warm_pid) or running(server_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(warm_pid) and not running(server_pid)


STARTER_THREAD = textwrap.dedent("""
    import threading, time
    from nbmagic.serve import warm
    from nbmagic.serve.local import _child_env

    def starter():
        process = warm.start(_child_env())
        assert process._ready.wait(120), "the warm process never said ready"

    thread = threading.Thread(target=starter)
    thread.start()
    thread.join()  # the thread that started the warm process has exited
    time.sleep(3)
    print(warm._WARM.alive, warm._WARM.popen.poll(), flush=True)
    warm.stop()
""")


def test_warm_process_outlives_the_thread_that_started_it(tmp_path):
    """Linux sends PR_SET_PDEATHSIG when the creating thread exits, not the process: the warm process must not
    die because the (short-lived) thread that started it did."""
    environment = dict(os.environ, NBMAGIC_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", STARTER_THREAD], env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "None"]


AFTER_CD = textwrap.dedent("""
    import os, sys
    from nbmagic.serve import warm
    from nbmagic.serve.api import serve
    from nbmagic.serve.local import _child_env

    first, second = sys.argv[1:3]
    os.chdir(first)
    assert warm.start(_child_env())._ready.wait(120)  # the warm process starts in the first folder
    os.chdir(second)  # %cd
    sys.path.insert(0, second)
    import localmod

    server = serve(localmod.Model(), name="after-cd")
    try:
        print(type(server.processes[0].popen).__name__, server.predict([[1]]), flush=True)
    finally:
        server.stop()
        warm.stop()
""")


def test_forked_server_imports_local_modules_from_the_current_folder(tmp_path):
    """After %cd, a server forked by the warm process imports a same-named local module from the new folder."""
    folders = []
    for name, value in (("first", 1), ("second", 2)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "localmod.py").write_text(
            f"class Model:\n    def predict(self, x):\n        return [{value}] * len(x)\n"
        )
        folders.append(str(folder))
    environment = dict(os.environ, NBMAGIC_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", AFTER_CD, *folders], env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Forked", "[2]"]


NOISY_IMPORT = textwrap.dedent("""
    from sklearn.dummy import DummyClassifier
    from nbmagic.serve import warm
    from nbmagic.serve.api import serve
    from nbmagic.serve.local import _child_env

    process = warm.start(_child_env())
    assert process._ready.wait(120)
    process.hint(["torch"])  # the module on PYTHONPATH prints to stdout while it is imported
    server = serve(DummyClassifier().fit([[0], [1]], [0, 1]), name="noisy")
    try:
        print(type(server.processes[0].popen).__name__, server.predict([[1]]) in ([0], [1]), flush=True)
    finally:
        server.stop()
        warm.stop()
""")


def test_a_library_printing_at_import_does_not_break_the_warm_process(tmp_path):
    """What imported code prints does not reach the kernel's pipe, and the servers are still forked."""
    noisy = tmp_path / "noisy"
    (noisy / "torch").mkdir(parents=True)
    (noisy / "torch" / "__init__.py").write_text(
        'print()\nprint("started soon")\nprint("exit now")\nraise ImportError("not the real torch")\n'
    )
    environment = dict(os.environ, NBMAGIC_HOME=str(tmp_path / "home"), PYTHONPATH=f"{noisy}{os.pathsep}{ROOT}")
    done = subprocess.run(
        [sys.executable, "-c", NOISY_IMPORT], env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["Forked", "True"]
