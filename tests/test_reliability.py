"""The store under real failures: kill -9 of a run in the middle of writing a value, and parallel runs at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from nbmagic.restore import restore
from nbmagic.store.runs import RunStore

BIG = [
    "%%pipeline_parameters\nseed = 0\n",
    "%%step make\nimport numpy as np\nbig = np.random.default_rng(seed).random(40_000_000)\n",
    "%%step use\nn = int(big.size)\n",
]
SMALL = [
    "%%pipeline_parameters\nseed = 0\n",
    "%%step load\ndata = list(range(1000))\nshared = [1] * 5000\n",
    "%%step train\nimport time\ntime.sleep(0.3)\nscore = float(sum(data) * (seed + 1))\n",
    "%pipeline_metrics score\n",
]


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nbmagic.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    """Until the killed processes are reaped (their orphaned children are reaped by init, a moment later)."""
    deadline = time.time() + timeout
    for pid in pids:
        while time.time() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)


def test_kill_9_in_the_middle_of_a_write(tmp_path, nbmagic_home):
    nb = _notebook(tmp_path / "big.ipynb", BIG)
    store_root = nbmagic_home / "store"
    proc = _cli("run", str(nb), "--quiet")
    deadline = time.time() + 120
    writing = []
    while time.time() < deadline and proc.poll() is None:
        tmp = store_root / "tmp"
        writing = [p for p in tmp.iterdir() if p.name.startswith("w-") and any(p.iterdir())] if tmp.is_dir() else []
        if writing:
            break
        time.sleep(0.005)
    assert writing, f"the run never started writing its value: {proc.communicate()}"
    victims = [proc.pid] + _descendants(proc.pid)
    for pid in victims:  # the machine loses the run: parent, step worker and the task writing the value
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    _wait_gone(victims)

    store = RunStore(store_root)
    for digest in store.objects.iter_hashes():  # objects/ holds only whole values
        store.objects.get(digest)
    listing = subprocess.run([sys.executable, "-m", "nbmagic.cli", "runs"], capture_output=True, text=True, check=True)
    torn = store.list_runs()[0]
    assert torn.status == "failed" and "interrupted" in torn.error and torn.id in listing.stdout
    store.objects.sweep_tmp(older_than_s=0)  # the killed writer's temp folder goes
    assert not any((store_root / "tmp").iterdir())

    rerun = _cli("run", str(nb), "--quiet")
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    runs = store.list_runs()
    assert runs[0].status == "done" and runs[1].id == torn.id and runs[1].status == "failed"
    ns: dict = {}
    restore(store, "last", "use", ["n"], namespace=ns)
    assert ns["n"] == 40_000_000


def test_parallel_processes_share_one_store(tmp_path, nbmagic_home):
    nb = _notebook(tmp_path / "small.ipynb", SMALL)
    procs = [_cli("run", str(nb), "--quiet", "--param", f"seed={i}") for i in range(4)]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    store = RunStore(nbmagic_home / "store")
    runs = store.list_runs()
    assert len(runs) == 4 and all(r.status == "done" for r in runs)
    assert sorted(r.metrics["score"] for r in runs) == [sum(range(1000)) * (i + 1) for i in range(4)]
    shared = {store.step_values(r.id, "load")["shared"]["hash"] for r in runs}
    assert len(shared) == 1  # the same value written by four processes at once is stored once
    for run in runs:
        ns: dict = {}
        restore(store, run.id, namespace=ns)
        assert ns["score"] == run.metrics["score"] and ns["shared"] == [1] * 5000
    assert store._connection().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # and a gc running while more runs write does not break them
    procs = [_cli("run", str(nb), "--quiet", "--param", f"seed={i}") for i in range(4, 6)]
    gc = subprocess.run([sys.executable, "-m", "nbmagic.cli", "gc", "--keep-last", "2"], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert all(p.wait(timeout=240) == 0 for p in procs)
    for run in store.list_runs()[:2]:
        restore(store, run.id, namespace={})
