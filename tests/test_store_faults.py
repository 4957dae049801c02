"""The store's fault suite: each fault is done for real and each case asserts the exact outcome.

Full disks are a real tmpfs of a few MB (mounted by the test; skipped where mounting is not allowed), kills
are real signals, parallel gc is a second real process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.faults import remount, small_filesystem, write_notebook
from helpers.shell import run_ok
from nbmagic.errors import NbMagicError, RunFailed
from nbmagic.restore import resolve_run, restore
from nbmagic.store.gc import Policy, collect
from nbmagic.store.objects import StoreFull
from nbmagic.store.runs import RunStore, StoreUnavailable

BIG = [
    "%%pipeline_parameters\nseed = 1\n",
    "%%step make\nimport numpy as np\nbig = np.random.default_rng(seed).random(625_000)\n",  # 5 MB
    "%%step use\ntotal = float(big.sum())\n",
    "%pipeline_metrics total\n",
]
SMALL = [
    "%%pipeline_parameters\nscale = 1\n",
    "%%step load\nimport numpy as np\nsmall = np.arange(1000)\n",
    "%%step double\nbigger = small * scale\nlast = int(bigger[-1])\n",
    "%pipeline_metrics last\n",
]


def _failed_run(ip, line: str):
    """Run a line that must end in a failed run (one line, RunFailed); return the run."""
    with pytest.raises(RunFailed) as caught:
        run_ok(ip, line)
    assert "\n" not in str(caught.value)
    return caught.value.run


def _cells(ip, cells):
    for cell in cells:
        run_ok(ip, cell)


def _flip_byte(store: RunStore, digest: str) -> Path:
    folder = store.objects._path(digest)
    data = folder / store.objects.manifest(digest)["files"][0]["path"]
    data.chmod(0o600)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    return data


def _corrupted_after_a_run(ip, step: str, name: str, line: str = "%compile_run --quiet"):
    """Record SMALL's cells, run ``line``, then flip a byte of the value ``name`` of ``step``: run, store, digest."""
    _cells(ip, SMALL)
    first = run_ok(ip, line)
    store = RunStore()
    digest = first.outputs(step)[name]["hash"]
    _flip_byte(store, digest)
    return first, store, digest


# ------------------------------------------------------------------------------------------- gc keeps


def test_size_budget_keeps_the_newest_run_and_says_so_in_one_line(ip, capfd):
    _cells(ip, BIG)
    run_ok(ip, "%gc --max-size 1MB --set-policy")
    first = run_ok(ip, "%compile_run --quiet --param seed=1")
    second = run_ok(ip, "%compile_run --quiet --param seed=2")
    assert first.status == second.status == "done"
    err = capfd.readouterr().err
    assert "gc: 5.0 MB kept over the 1.0 MB budget: 1 run is protected (the newest)" in err
    store = RunStore()
    runs = store.list_runs()
    assert second.id in [r.id for r in runs]  # the run that just finished is never collected
    ns: dict = {}
    restore(store, "last", namespace=ns)
    assert float(ns["big"].sum()) == second.metrics["total"]
    # the budget really applies: the older run went as soon as its values were past the grace period
    report = collect(store, Policy(max_size=10**6), grace=0)
    assert [r.id for r in store.list_runs()] == [second.id] and report.over_budget.count("\n") == 0


def test_keep_last_zero_never_deletes_the_new_run(ip, monkeypatch):
    _cells(ip, SMALL)
    monkeypatch.setenv("NBMAGIC_GC", "keep_last=0")
    runs = [run_ok(ip, f"%compile_run --quiet --param scale={s}") for s in (1, 2)]
    store = RunStore()
    assert [r.id for r in store.list_runs()] == [runs[1].id]
    ns: dict = {}
    restore(store, "last", namespace=ns)
    assert list(ns["bigger"][:3]) == [0, 2, 4]


def test_dry_run_predicts_exactly(ip):
    _cells(ip, SMALL)
    for s in (1, 2, 3, 4):
        run_ok(ip, f"%compile_run --quiet --param scale={s}")
    store = RunStore()
    for policy in (Policy(keep_last=1), Policy(max_size=1)):
        dry = collect(store, policy, dry_run=True, grace=0)
        real = collect(store, policy, grace=0)
        assert (dry.runs, dry.values, dry.bytes_freed, dry.over_budget) == (
            real.runs,
            real.values,
            real.bytes_freed,
            real.over_budget,
        )


def test_gc_removes_a_symlinked_value_or_run_folder_never_what_it_points_to(ip, tmp_path):
    _cells(ip, SMALL)
    old, new = (run_ok(ip, f"%compile_run --quiet --param scale={s}") for s in (1, 2))
    store = RunStore()
    digest = old.outputs("double")["last"]["hash"]  # (bigger == small at scale 1: shared)
    outside = {}
    for name, inside in (("value", store.objects._path(digest)), ("run", store.root / "runs" / old.id)):
        target = tmp_path / f"outside-{name}"
        os.rename(inside, target)  # the same bytes, now outside the store, behind a symlink at the old place
        os.symlink(target, inside, target_is_directory=True)
        outside[inside] = (target, sorted(p.relative_to(target) for p in target.rglob("*")))
        assert outside[inside][1]
    report = collect(store, Policy(keep_last=1), grace=0)
    assert [r for r, _, _ in report.runs] == [old.id] and digest in {d for d, _ in report.values}
    for inside, (target, files) in outside.items():
        assert not os.path.lexists(inside)  # the link went with the gc
        assert sorted(p.relative_to(target) for p in target.rglob("*")) == files  # what it pointed to did not
    ns: dict = {}
    restore(store, new.id, namespace=ns)
    assert list(ns["bigger"][:3]) == [0, 2, 4]


def test_gc_that_cannot_move_a_folder_removes_it_in_place_and_says_what_was_left(ip, tmp_path):
    import shutil

    _cells(ip, SMALL)
    old, new = (run_ok(ip, f"%compile_run --quiet --param scale={s}") for s in (1, 2))
    store = RunStore()
    digest = old.outputs("double")["last"]["hash"]
    with contextlib.ExitStack() as mounts:
        for name, inside in (("value", store.objects._path(digest)), ("run", store.root / "runs" / old.id)):
            saved = tmp_path / f"saved-{name}"
            os.rename(inside, saved)
            mounts.enter_context(small_filesystem(inside, "1m"))  # a mount point: rename() fails with EBUSY
            shutil.copytree(saved, inside, dirs_exist_ok=True)
        report = collect(store, Policy(keep_last=1), grace=0)
        assert [r for r, _, _ in report.runs] == [old.id] and digest in {d for d, _ in report.values}
        note = [n for n in report.notes if "could not be moved" in n]
        assert note == [
            "1 value and 1 run folder could not be moved out of the store (Device or resource busy); their files "
            "were removed in place; 2 folders left, remove them by hand: "
            f"{store.objects._path(digest)}, {store.root / 'runs' / old.id}"
        ], report.notes
        assert report.text().count(note[0]) == 1
        for inside in (store.objects._path(digest), store.root / "runs" / old.id):
            assert list(inside.iterdir()) == []  # its files went all the same
    assert [r.id for r in store.list_runs()] == [new.id]
    ns: dict = {}
    restore(store, new.id, namespace=ns)
    assert list(ns["bigger"][:3]) == [0, 2, 4]


def test_best_trial_after_restart_is_what_gc_protects_and_restore_restores(tmp_path):
    store = RunStore(tmp_path / "store")
    ids = {}
    for name, loss in (("old-best", 0.1), ("old", 0.5), ("new-a", 0.4), ("new-b", 0.3)):
        run_id = store.create_run("p", {}, [], experiment="exp")
        store.finish_run(run_id, "done", {"loss": loss})
        ids[name] = run_id
        time.sleep(0.01)
        if name == "old":
            since = time.time()
    store.set_experiment("exp", "loss", "minimize", since=since)  # %katib --restart forgot the first two
    assert resolve_run(store, "best") == ids["new-b"] == store.best_trial("exp")
    report = collect(store, Policy(keep_last=0), grace=0)
    kept = {r.id for r in store.list_runs()}
    assert ids["new-b"] in kept and ids["old-best"] not in kept  # the newest run is kept too: new-b is both
    assert {r for r, _, _ in report.runs} == {ids["old-best"], ids["old"], ids["new-a"]}


def test_a_parallel_gc_process_never_removes_what_a_running_run_uses(tmp_path):
    notebook = write_notebook(
        tmp_path / "nb.ipynb",
        [
            "%%step load\nimport numpy as np\nsmall = np.arange(1000)\n",
            "%%step wait\nimport time\ntime.sleep(4)\ntotal = int(small.sum())\n",
            "%pipeline_metrics total\n",
        ],
    )
    nbmagic = [sys.executable, "-m", "nbmagic.cli"]
    assert subprocess.run([*nbmagic, "run", str(notebook)], capture_output=True).returncode == 0
    store = RunStore()
    old = time.time() - 7200
    for digest in store.objects.iter_hashes():  # the first run's values are long past the grace period
        os.utime(store.objects._path(digest), (old, old))
    runner = subprocess.Popen(
        [*nbmagic, "run", str(notebook), "--no-cache"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    collections = 0
    while runner.poll() is None:
        gc = subprocess.run([*nbmagic, "gc", "--keep-last", "0"], capture_output=True, text=True)
        assert gc.returncode == 0, gc.stderr
        collections += 1
    out, err = runner.communicate()
    assert runner.returncode == 0, err.decode()
    assert collections >= 2
    ns: dict = {}
    restore(RunStore(), "last", namespace=ns)
    assert ns["total"] == 499500 and len(ns["small"]) == 1000


# ------------------------------------------------------------------------------------------- full disk


def test_a_full_disk_fails_the_step_naming_the_variable_and_heals_after_space_is_freed(ip, tmp_path, monkeypatch):
    with small_filesystem(tmp_path / "fs", "3m") as fs:
        monkeypatch.setenv("NBMAGIC_HOME", str(fs))
        _cells(ip, BIG)
        run = _failed_run(ip, "%compile_run --quiet")
        assert run.status == "failed"
        make = run.steps["make"]
        assert make.status == "failed" and make.error == (
            f"step 'make': cannot store variable 'big': no space left on device ({fs / 'store'})"
        )
        assert "dill" not in make.error and run.steps["use"].status != "done"
        store = RunStore()
        assert store.get_run(run.id).status == "failed"
        kept = {store.objects.manifest(d)["name"]: d for d in store.objects.iter_hashes()}
        assert "big" not in kept  # nothing half-written; what was stored whole is intact
        assert store.objects.verify_all()[1] == []
        assert list((fs / "store" / "tmp").iterdir()) == []
        assert [r for r in store.step_rows(run.id) if r["cache_key"] and store.cache_get(r["cache_key"])] == []
        remount(fs, "size=40m")  # space freed: the next run stores the value (no cached gap)
        again = run_ok(ip, "%compile_run --quiet")
        assert again.status == "done" and again.steps["make"].cached is False
        assert again.value("big").shape == (625_000,)


def test_a_full_disk_under_the_index_is_one_line(tmp_path):
    with small_filesystem(tmp_path / "fs", "1m") as fs:
        store = RunStore(fs / "store")
        run_id = store.create_run("p", {}, ["a"])
        filler = fs / "filler"
        with open(filler, "wb") as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        with pytest.raises(StoreUnavailable) as caught:
            for i in range(2000):
                store.set_step(run_id, "a", "running", log="x" * 4096 + str(i))
        assert str(caught.value) == (
            f"the run store index {fs / 'store' / 'index.sqlite'}: no space left on device (free space, then run again)"
        )
        with pytest.raises(StoreFull, match=r"^cannot store variable 'v': no space left on device"):
            store.objects.put(np.ones(100_000), "v")
        filler.unlink()
        store.finish_run(run_id, "failed", {}, "disk full")
        assert store.get_run(run_id).status == "failed"


# ------------------------------------------------------------------------------------------- corruption


def test_a_corrupt_value_is_noticed_removed_and_recomputed(ip):
    first, store, digest = _corrupted_after_a_run(ip, "load", "small")
    with pytest.raises(NbMagicError, match=r"stored value 'small' is corrupt: .*runs again on the next run"):
        restore(store, first.id, namespace={})
    assert not store.objects.exists(digest)
    again = run_ok(ip, "%compile_run --quiet")
    assert again.status == "done" and again.steps["load"].cached is False
    ns: dict = {}
    restore(store, again.id, namespace=ns)
    assert list(ns["small"][:3]) == [0, 1, 2]


def test_a_no_cache_rerun_rewrites_a_corrupt_value(ip):
    first, store, digest = _corrupted_after_a_run(ip, "load", "small")
    again = run_ok(ip, "%compile_run --quiet --no-cache")
    assert again.status == "done" and again.outputs("load")["small"]["hash"] == digest
    assert store.objects.get(digest, "small")[999] == 999  # rewritten whole


def test_gc_verify_removes_corrupt_values_and_their_cache_entries(ip):
    first, store, digest = _corrupted_after_a_run(ip, "double", "bigger", "%compile_run --quiet --param scale=2")
    count = len(list(store.objects.iter_hashes()))
    done = subprocess.run([sys.executable, "-m", "nbmagic.cli", "gc", "--verify"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    head = done.stdout.splitlines()[0]
    assert head == (
        f"gc --verify: {count} values checked, 1 corrupt removed, 1 cache entry dropped"
        " (the steps that made them run again on the next run)"
    )
    again = run_ok(ip, "%compile_run --quiet --param scale=2")
    assert again.steps["load"].cached is True and again.steps["double"].cached is False
    assert store.objects.get(digest, "bigger")[3] == 6


# ------------------------------------------------------------------------------------------- kills and PIDs


def test_a_killed_run_is_torn_even_when_its_pid_is_reused(tmp_path):
    root = tmp_path / "store"
    code = (
        "import time\nfrom nbmagic.store.runs import RunStore\n"
        f"print(RunStore({str(root)!r}).create_run('p', {{}}, ['a']), flush=True)\ntime.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    run_id = owner.stdout.readline().strip()
    store = RunStore(root)
    assert store.list_runs()[0].status == "running"
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    # the PID now belongs to another process (a reused PID, made here with a live stand-in)
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.update_run(run_id, status="running")
        store._connection().execute("UPDATE runs SET owner_pid=? WHERE id=?", (stand_in.pid, run_id))
        assert store.mark_torn_runs() == 1
        record = store.get_run(run_id)
        assert record.status == "failed" and record.error == "the run was interrupted (its process ended)"
    finally:
        stand_in.kill()
        stand_in.wait()


# ------------------------------------------------------------------------------------------- bad homes


def test_store_is_owner_only_whatever_the_umask(tmp_path):
    code = (
        "import os\nos.umask(0)\nfrom nbmagic.store.runs import RunStore\n"
        f"s = RunStore({str(tmp_path / 'home' / 'store')!r})\ns.objects.put([1, 2], 'x')\ns.run_dir('r1')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    loose = []
    for path in [tmp_path / "home", *(tmp_path / "home").rglob("*")]:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            loose.append((str(path.relative_to(tmp_path)), oct(mode)))
    assert loose == []


def test_home_that_is_a_file_is_one_line(tmp_path):
    home = tmp_path / "home"
    home.write_text("")
    env = {**os.environ, "NBMAGIC_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "nbmagic.cli", "runs"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr == (
        f"nbmagic: cannot create the run store {home / 'store'}: a part of that path is a file;"
        " point $NBMAGIC_HOME at a folder\n"
    )


def test_a_read_only_store_is_one_line_and_nothing_is_touched(tmp_path):
    with small_filesystem(tmp_path / "fs", "4m") as fs:
        store = RunStore(fs / "store")
        run_id = store.create_run("p", {}, ["a"])
        store.finish_run(run_id, "done", {})
        store.close()
        before = {p: p.stat().st_mtime for p in fs.rglob("*")}
        remount(fs, "ro")
        try:
            with pytest.raises(StoreUnavailable, match=r"^the run store index .*index.sqlite is read-only: make it"):
                RunStore(fs / "store").create_run("p", {}, ["a"])
        finally:
            remount(fs, "rw")
        assert {p: p.stat().st_mtime for p in fs.rglob("*")} == before


def test_run_prefixes_are_not_sql_wildcards(tmp_path):
    store = RunStore(tmp_path / "store")
    store.create_run("p", {}, [])
    for ref in ("%", "2026____", "_"):
        with pytest.raises(NbMagicError, match="no run"):
            resolve_run(store, ref)


def test_fault_table_is_recorded():
    table = (Path(__file__).parents[1] / "RELIABILITY.md").read_text()
    assert "data lost" in table.lower()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "test_" in line]
    assert {line.split("`")[1] for line in rows} >= {
        name for name in globals() if name.startswith("test_") and name != "test_fault_table_is_recorded"
    }


# ------------------------------------------------------------------------------------------- security


def test_a_secret_never_reaches_the_store_or_the_log(ip, monkeypatch, nbmagic_home):
    secret = "hunter2-very-secret"
    monkeypatch.setenv("DB_PASSWORD", secret)
    _cells(
        ip,
        [
            "%%step read --secret db-creds:password=DB_PASSWORD\nimport os\npw = os.environ['DB_PASSWORD']\n"
            "conn = {'user': 'me', 'password': pw}\nn = len(pw)\nprint('connecting with', pw)\n",
            "%%step use\nm = n * 2\n",
            "%pipeline_metrics m\n",
        ],
    )
    run = run_ok(ip, "%compile_run --quiet")
    assert run.status == "done" and run.metrics["m"] == 2 * len(secret)
    read = run.steps["read"]
    assert read.not_kept == {"pw": "holds a secret", "conn": "holds a secret"} and "n" in read.outputs
    assert "connecting with ***" in run.logs("read")
    leaked = [p for p in Path(nbmagic_home).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []


def test_a_step_that_passes_a_secret_on_fails_with_one_line(ip, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2-very-secret")
    _cells(
        ip,
        [
            "%%step read --secret db-creds:password=DB_PASSWORD\nimport os\npw = os.environ['DB_PASSWORD']\n",
            "%%step use\nm = len(pw)\n",
            "%pipeline_metrics m\n",
        ],
    )
    run = _failed_run(ip, "%compile_run --quiet")
    assert run.status == "failed" and run.steps["read"].error == (
        "step 'read': variable 'pw' holds a secret and is not passed to the steps that read it"
        " (read the secret in the step that uses it)"
    )


def test_a_planted_pickle_is_refused_before_it_runs(tmp_path):
    from nbmagic.runtime import marshal
    from nbmagic.store.objects import UntrustedValue

    store = RunStore(tmp_path / "store")
    honest = store.objects.put({"a": 1}, "d")  # signed with the store's key
    assert store.objects.get(honest, "d") == {"a": 1}
    key = store.root / "key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    staging = tmp_path / "staging"
    staging.mkdir()
    manifest = marshal.save(Payload(), staging, "model")  # a valid manifest and content hash, but no signature
    planted = store.objects._path(manifest["hash"])
    planted.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(planted)
    with pytest.raises(
        UntrustedValue, match=r"^stored value 'model' \((pickle|dill)\) is not signed with this store's key"
    ):
        store.objects.get(manifest["hash"], "model")
    assert not marker.exists()
    (planted / "manifest.sig").write_text("0" * 64)  # a forged signature does not help
    with pytest.raises(UntrustedValue):
        store.objects.get(manifest["hash"], "model")
    assert not marker.exists()
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    safe = marshal.save(np.arange(3), arrays, "a")  # npy never runs code: loads unsigned
    target = store.objects._path(safe["hash"])
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays.rename(target)
    assert list(store.objects.get(safe["hash"], "a")) == [0, 1, 2]


def test_best_trial_ties_go_to_the_earliest_trial(tmp_path):
    store = RunStore(tmp_path / "store")
    first = store.create_run("p", {}, [], experiment="exp")
    store.finish_run(first, "done", {"acc": 0.9})
    time.sleep(0.01)
    second = store.create_run("p", {}, [], experiment="exp")
    store.finish_run(second, "done", {"acc": 0.9})
    nan = store.create_run("p", {}, [], experiment="exp")
    store.finish_run(nan, "done", {"acc": float("nan")})
    store.set_experiment("exp", "acc", "maximize")
    assert store.best_trial("exp") == first == resolve_run(store, "best:exp")
    assert store.best_trials() == {first}


def test_a_step_log_is_capped_head_and_tail_kept(ip, monkeypatch):
    monkeypatch.setenv("NBMAGIC_LOG_CAP", "1MB")
    _cells(
        ip,
        [
            "%%step noisy\nprint('FIRST LINE')\nfor i in range(100_000):\n    print('x' * 60)\n"
            "print('LAST LINE')\nn = 1\n",
            "%pipeline_metrics n\n",
        ],
    )
    run = run_ok(ip, "%compile_run --quiet")
    log = run.logs("noisy")
    assert run.status == "done" and 10**6 <= len(log.encode()) < 10**6 + 200
    assert log.startswith("FIRST LINE") and log.rstrip().endswith("LAST LINE")
    assert "bytes cut: the step's log was over the 1000000 byte cap ($NBMAGIC_LOG_CAP)" in log


def test_a_disk_that_fills_during_a_run_is_one_line_and_the_run_ends_failed(ip, tmp_path, monkeypatch):
    from IPython.core.error import UsageError

    with small_filesystem(tmp_path / "fs", "4m") as fs:
        monkeypatch.setenv("NBMAGIC_HOME", str(fs))
        filler = fs / "filler"
        _cells(
            ip,
            [
                # fills the disk when the run executes it (not when the cell runs in this kernel)
                f"%%step fill\nimport os\nif os.getpid() != {os.getpid()}:\n"
                f"    handle = open({str(filler)!r}, 'wb')\n    try:\n        while True:\n"
                "            handle.write(b'0' * 65536)\n            handle.flush()\n    except OSError:\n"
                "        handle.close()\n    del handle\nn = 1\n",
                "%%step after\nm = n + 1\n",
                "%pipeline_metrics m\n",
            ],
        )
        with pytest.raises(UsageError) as caught:
            run_ok(ip, "%compile_run --quiet")
        message = str(caught.value)
        assert "\n" not in message and "no space left on device" in message and str(fs) in message
        filler.unlink()  # space is back: the run's end is recorded, nothing stays 'running'
        runs = RunStore().list_runs()
        assert [r.status for r in runs] == ["failed"]
        assert "\n" not in runs[0].error and "no space left on device" in runs[0].error and str(fs) in runs[0].error


# ------------------------------------------------------------------------------------------- process trees


def _alive(pid: int) -> bool:
    from nbmagic.store.processes import alive

    return alive(pid)


def _gone_soon(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


ESCAPE = (
    "import os, subprocess, sys\n"
    "session = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # leaves the step's group
    "daemon = subprocess.run([sys.executable, '-c', 'import os, time, sys\\n"
    "if os.fork():\\n    os._exit(0)\\nos.setsid()\\nif os.fork():\\n    os._exit(0)\\n"
    "print(os.getpid(), flush=True)\\nos.close(1)\\nos.close(2)\\ntime.sleep(300)'], capture_output=True, text=True)\n"
    "open({pids!r}, 'w').write(f'{{session.pid}} {{daemon.stdout.split()[0]}}')\n"
    "del session, daemon\n"
)


def _end(pids: Path) -> None:
    for pid in [int(p) for p in pids.read_text().split()]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pids.unlink()


def test_what_a_step_starts_ends_with_the_step(ip, tmp_path):
    pids = tmp_path / "pids"
    _cells(ip, [f"%%step spawn\nif False:\n    pass\n{ESCAPE.format(pids=str(pids))}n = 1\n", "%pipeline_metrics n\n"])
    _end(pids)  # the cell ran in this kernel too: end what it started here
    run = run_ok(ip, "%compile_run --quiet --no-cache")
    assert run.status == "done"
    leftovers = [int(p) for p in pids.read_text().split()]
    assert len(leftovers) == 2 and _gone_soon(leftovers)


def test_a_timeout_ends_the_whole_tree(ip, tmp_path):
    pids = tmp_path / "pids"
    code = (
        ESCAPE.format(pids=str(pids)) + f"import time\ntime.sleep(0 if os.getpid() == {os.getpid()} else 300)\nn = 1\n"
    )
    _cells(ip, [f"%%step spawn --timeout 3\n{code}", "%pipeline_metrics n\n"])
    _end(pids)
    run = _failed_run(ip, "%compile_run --quiet --no-cache")
    assert run.status == "failed" and run.steps["spawn"].status == "timed_out"
    assert _gone_soon([int(p) for p in pids.read_text().split()])


def test_a_step_dies_with_its_worker(ip, tmp_path):
    from nbmagic.run.pool import worker_pool

    marker = tmp_path / "step.pid"
    code = (
        f"import os, time\nif os.getpid() != {os.getpid()}:\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n    time.sleep(300)\nn = 1\n"
    )
    _cells(ip, [f"%%step slow\n{code}", "%pipeline_metrics n\n"])
    import threading

    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run=run_cell_quiet(ip)), daemon=True)
    runner.start()
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    step_pid = int(marker.read_text())
    worker_pid = worker_pool()._process.pid
    os.kill(worker_pid, signal.SIGKILL)  # the worker is killed: its step must not run on unsupervised
    assert _gone_soon([step_pid])
    runner.join(30)
    assert result["run"].status == "failed"


def run_cell_quiet(ip):
    return _failed_run(ip, "%compile_run --quiet --no-cache")


def test_a_step_interrupted_or_crashed_says_so(ip):
    kernel = os.getpid()
    _cells(
        ip,
        [
            f"%%step stop\nimport os\nif os.getpid() != {kernel}:\n    raise KeyboardInterrupt\na = 1\n",
            f"%%step crash\nimport os, ctypes\nif os.getpid() != {kernel}:\n    ctypes.string_at(0)\nb = 1\n",
            "%pipeline_metrics a b\n",
        ],
    )
    run = _failed_run(ip, "%compile_run --quiet")
    assert run.steps["stop"].error == "step 'stop' was interrupted (KeyboardInterrupt)"
    assert run.steps["crash"].error == "step 'crash' crashed: segmentation fault (signal 11)"
    assert RunStore().get_run(run.id).status == "failed"


# ------------------------------------------------------------------------------ Ctrl-C on a tuning wait


def _tune_cells(pids: Path, hold: Path) -> list[str]:
    """A pipeline whose trial step starts a ``sleep`` in its own session and waits while ``hold`` exists."""
    return [
        "%load_ext nbmagic",
        "%%pipeline_parameters\nc = 1.0",
        "%%step train --env IN_PIPELINE=1\nimport os, subprocess, time\nloss = (c - 3.0) ** 2\n"
        "if os.environ.get('IN_PIPELINE'):\n"
        "    child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        f"    open(os.path.join({str(pids)!r}, f'{{os.getpid()}}-{{child.pid}}'), 'w').close()\n"
        f"    while os.path.exists({str(hold)!r}):\n        time.sleep(0.1)\n    child.kill()\n",
        "%pipeline_metrics loss",
    ]


KATIB = '%katib --param "c=double(0,6)" --algorithm random --seed 0 --max-trials 4 --parallel 2 --name ctrlc --quiet'


def _held_trials(tmp_path: Path) -> tuple[Path, Path]:
    """(pids, hold): the folder the trials' steps name their processes in, and the file that keeps them waiting."""
    pids, hold = tmp_path / "pids", tmp_path / "hold"
    pids.mkdir()
    hold.touch()
    return pids, hold


def _started_trials(pids: Path, process: subprocess.Popen | None = None) -> list[int]:
    """Once both trials are in their step, each with a child in its own session: the steps' and children's PIDs."""
    deadline = time.time() + 120
    while len(list(pids.iterdir())) < 2:
        assert time.time() < deadline and (process is None or process.poll() is None), "the trials did not start"
        time.sleep(0.1)
    return [int(p) for name in os.listdir(pids) for p in name.split("-")]


@contextlib.contextmanager
def _tuning_kernel(pids: Path, hold: Path):
    """A real kernel with the held trials' pipeline recorded; (manager, client), shut down on leaving."""
    from helpers.kernel import execute, start_kernel

    manager, client = start_kernel()
    try:
        for cell in _tune_cells(pids, hold):
            assert execute(client, cell)[0] == "ok"
        yield manager, client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.slow
def test_ctrl_c_on_katib_wait_stops_the_trials_and_keeps_the_experiment(tmp_path, nbmagic_home):
    from helpers.kernel import execute, execute_in_background

    pids, hold = _held_trials(tmp_path)
    with _tuning_kernel(pids, hold) as (manager, client):
        # Run All: the cell after `%katib --wait` must not run once Ctrl-C failed the cell
        thread, result = execute_in_background(client, f"exp = {KATIB} --wait\nafter = 1")
        started = _started_trials(pids)
        manager.interrupt_kernel()  # a real SIGINT to the kernel, as the Stop button sends
        thread.join(60)
        status, out, err = result["reply"]
        assert status == "error", err  # the cell fails, so Run All stops here
        assert err.strip() == (
            "KeyboardInterrupt: experiment 'ctrlc' stopped: 0 trials finished, 2 running ones stopped; "
            "the same %katib resumes it (or: exp = sys.last_value.experiment)"
        )
        assert execute(client, "print('after' in dir())")[1].strip() == "False"
        assert _gone_soon(started), "a trial's step or its child outlived Ctrl-C"
        # the stopped experiment stays reachable, as the line says
        assert execute(client, "import sys\nexp = sys.last_value.experiment")[0] == "ok"
        assert execute(client, "print(exp.status, *[t.status for t in exp.trials])")[1].split() == [
            "stopped",
            "stopped",
            "stopped",
        ]
        runs = [r for r in RunStore().list_runs() if r.experiment == "ctrlc"]
        assert sorted(r.status for r in runs) == ["stopped", "stopped"]
        assert all(r.error == "stopped" for r in runs)
        # the next %katib is not refused and resumes the study: the stopped trials are asked again
        hold.unlink()
        status, out, err = execute(client, f"exp2 = {KATIB}\nexp2.wait(120)\nprint(exp2.resumed, exp2.status)")
        assert status == "ok", err
        assert out.split() == ["0", "succeeded"]
        assert execute(client, "print(sum(t.status == 'succeeded' for t in exp2.trials))")[1].strip() == "4"
        assert execute(client, "%katib --stop")[1].strip() == "nbmagic: no local experiment is running in this kernel"
    assert not (nbmagic_home / "tune" / "ctrlc.owner").exists()  # the study's owner record was released


@pytest.mark.slow
def test_ctrl_c_on_exp_wait_stops_the_trials_then_interrupts_the_cell(tmp_path):
    from helpers.kernel import execute, execute_in_background

    pids, hold = _held_trials(tmp_path)
    with _tuning_kernel(pids, hold) as (manager, client):
        assert execute(client, f"exp = {KATIB}")[0] == "ok"
        thread, result = execute_in_background(client, "exp.wait()")
        started = _started_trials(pids)
        manager.interrupt_kernel()
        thread.join(60)
        status, out, err = result["reply"]
        assert status == "error" and "KeyboardInterrupt" in err  # exp.wait() re-raises once the trials ended
        assert execute(client, "print(exp.done)")[1].strip() == "True"  # stop(wait=True) ran before the re-raise
        assert _gone_soon(started), "a trial's step or its child outlived Ctrl-C"
        assert execute(client, "print(exp.status, *[t.status for t in exp.trials])")[1].split() == ["stopped"] * 3
    runs = [r for r in RunStore().list_runs() if r.experiment == "ctrlc"]
    assert sorted(r.status for r in runs) == ["stopped", "stopped"]


@pytest.mark.slow
def test_stop_ends_running_trials_and_katib_stop_names_the_experiment(tmp_path):
    from helpers.kernel import execute

    pids, hold = _held_trials(tmp_path)
    with _tuning_kernel(pids, hold) as (_, client):
        assert execute(client, f"exp = {KATIB}")[0] == "ok"
        started = _started_trials(pids)
        status, out, err = execute(client, f"{KATIB}")  # a second one in the same kernel: refused, naming --stop
        assert status == "error" and "stop it first (%katib --stop," in err
        status, out, err = execute(client, "%katib --stop")
        assert status == "ok", err
        assert out.strip() == (
            "nbmagic: experiment 'ctrlc' stopped: 0 trials finished, 2 running ones stopped; the same %katib resumes it"
        )
        assert _gone_soon(started), "stop() left a trial process running"
    runs = [r for r in RunStore().list_runs() if r.experiment == "ctrlc"]
    assert sorted(r.status for r in runs) == ["stopped", "stopped"]


# ------------------------------------------------------------------------------ smaller faults


def test_kfp_unsafe_parameter_values_are_one_line_at_compile(tmp_path, capsys):
    from nbmagic.cli import main

    cases = {
        "x = 1e400": "parameter 'x' is inf (a float literal beyond 1.8e308 overflows to inf): a KFP pipeline "
        "parameter must be a finite number; use a smaller value",
        "big = 9007199254740993": "parameter 'big' = 9007199254740993 is beyond 2**53: KFP stores numbers as "
        'doubles and would change it to 9007199254740992; pass it as a str parameter ("9007199254740993") and '
        "convert it in the step",
    }
    for index, (line, expected) in enumerate(cases.items()):
        notebook = write_notebook(
            tmp_path / f"n{index}.ipynb", [f"%%pipeline_parameters\n{line}\n", "%%step s\ny = 1\n"]
        )
        for output in ("p.yaml", "p.py"):
            assert main(["compile", str(notebook), "-o", str(tmp_path / output)]) == 2
            assert capsys.readouterr().err == f"nbmagic: {expected}\n"
            assert not (tmp_path / output).exists()
    exact = write_notebook(
        tmp_path / "ok.ipynb", ["%%pipeline_parameters\nbig = 9007199254740992\n", "%%step s\ny = big\n"]
    )
    assert main(["compile", str(exact), "-o", str(tmp_path / "ok.yaml")]) == 0  # 2**53 itself is carried exactly
    assert "defaultValue: 9007199254740992" in (tmp_path / "ok.yaml").read_text()


def test_a_parameter_kfp_would_refuse_is_refused_when_its_cell_runs(ip):
    from IPython.core.error import UsageError

    for name in ("__name__", "_private"):
        result = ip.run_cell(f"%%pipeline_parameters\n{name} = 3\n", store_history=True)
        assert isinstance(result.error_in_exec, UsageError)
        assert str(result.error_in_exec) == (
            f"%%pipeline_parameters, line 2: parameter {name!r} must start with a letter "
            "(pipeline inputs cannot start with _)"
        )


def test_workers_zero_is_an_error(ip):
    from IPython.core.error import UsageError

    _cells(ip, SMALL)
    for line in ("%compile_run --workers 0", "%compile_run --workers -2"):
        result = ip.run_cell(line, store_history=True)
        assert isinstance(result.error_in_exec, UsageError)
        assert "--workers must be at least 1" in str(result.error_in_exec)
    assert RunStore().list_runs() == []  # nothing was started


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_nbmagic_run_on_a_signal_says_one_line_and_ends_everything(tmp_path, sig):
    pids = tmp_path / "pids"
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        [
            "%%step slow\nimport os, subprocess, time\n"
            "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
            "time.sleep(300)\nx = 1\n"
        ],
    )
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "nbmagic.cli", "run", str(notebook)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, whatever ran pytest
    )
    deadline = time.time() + 60
    while not (pids.exists() and pids.read_text()):
        assert time.time() < deadline and process.poll() is None, "the step did not start"
        time.sleep(0.05)
    step_pids = [int(p) for p in pids.read_text().split()]
    process.send_signal(sig)
    signalled = time.time()
    out, err = process.communicate(timeout=60)
    reason = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    assert process.returncode == (130 if sig == signal.SIGINT else 143)
    assert "Traceback" not in out + err and "Error" not in err
    (run,) = RunStore().list_runs()
    assert err == f"nbmagic: {reason}: run {run.id} marked failed after {run.duration:.2f} s; its steps were stopped\n"
    assert run.status == "failed" and run.error == reason
    assert started < run.started and signalled - 0.5 < run.ended < signalled + 6  # ended at the signal, not later
    assert _gone_soon(step_pids), "the step or its child outlived the command"


# ------------------------------------------------------------------------------ single-flight lock files

CONTENDER = """
import os, sys, time
from pathlib import Path
from nbmagic.run.single_flight import try_acquire
root, key, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
held = root / "held"
clashes = 0
for _ in range(rounds):
    flight = None
    while flight is None:
        flight = try_acquire(root, key)
    try:  # inside the lock: nobody else may be here
        os.close(os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        clashes += 1
    else:
        time.sleep(0.0005)
        os.unlink(held)
    flight.release()
print(clashes)
"""

SWEEPER = """
import sys, time
from pathlib import Path
from nbmagic.store.lockfiles import sweep_flights
root, until = Path(sys.argv[1]), float(sys.argv[2])
swept = 0
while time.time() < until:
    swept += sweep_flights(root)
print(swept)
"""


def test_flight_locks_are_removed_without_ever_letting_two_holders_in(tmp_path):
    key = "ab" * 8
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), key, "300"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    sweeper = subprocess.Popen(
        [sys.executable, "-c", SWEEPER, str(tmp_path), str(time.time() + 8)], stdout=subprocess.PIPE, text=True
    )
    clashes = [int(p.communicate(timeout=120)[0]) for p in contenders]
    sweeper.communicate(timeout=60)
    assert clashes == [0, 0, 0]  # holders unlink on release and a sweeper runs: still one holder at a time
    assert list((tmp_path / "flights").iterdir()) == []  # nothing left behind


def test_runs_leave_no_lock_files_and_gc_sweeps_a_killed_leaders(ip, tmp_path):
    _cells(ip, SMALL)
    run_ok(ip, "%compile_run --quiet")
    flights = RunStore().root / "flights"
    assert sorted(p.name for p in flights.iterdir()) == []  # each step's lock went with its release
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom nbmagic.run.single_flight import try_acquire\n"
            "f = try_acquire(Path(sys.argv[1]), 'cd' * 8)\nprint('held', flush=True)\ntime.sleep(300)",
            str(RunStore().root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        collect(RunStore(), Policy(keep_last=10))
        assert [p.name for p in flights.iterdir()] == ["cd" * 8 + ".lock"]  # held: never taken from its holder
    finally:
        holder.kill()  # a leader killed mid-step leaves its lock file
        holder.wait()
    report = collect(RunStore(), Policy(keep_last=10))
    assert report.flights_removed == 1 and list(flights.iterdir()) == []


# ------------------------------------------------------------------------------ values stored before signing


def test_values_stored_before_signing_can_be_signed_once_the_user_vouches_for_them(ip, capsys):
    import re

    from nbmagic.cli import main
    from nbmagic.store.objects import UntrustedValue

    _cells(ip, ["%%step make\nmodel = {'weights': [1, 2, 3]}\nother = {'bias': 4}\n"])
    run = run_ok(ip, "%compile_run --quiet")
    store = RunStore()
    refs = run.steps["make"].outputs
    for ref in refs.values():  # as a store written before manifests were signed holds them
        (store.objects._path(ref["hash"]) / "manifest.sig").unlink()
    model, other = refs["model"]["hash"], refs["other"]["hash"]
    with pytest.raises(UntrustedValue):
        store.objects.get(model, "model")
    broken = _flip_byte(store, other)  # one of them is also corrupt: it must not get signed

    def listing() -> str:
        capsys.readouterr()
        assert main(["gc", "--sign-unsigned"]) == 0  # listed, nothing signed without --yes
        return capsys.readouterr().out

    def refused(*argv: str) -> str:
        capsys.readouterr()
        assert main(["gc", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        with pytest.raises(UntrustedValue):  # nothing was signed
            store.objects.get(model, "model")
        return err

    out = listing()
    first = re.fullmatch(r".*--sign-unsigned --yes ([0-9a-f]{12})", out.splitlines()[0]).group(1)
    assert out == (
        "gc --sign-unsigned: 2 values (pickle, 59 B) not signed with this store's key, refused by %restore; if you "
        f"trust everyone who could write this store, sign exactly these with --sign-unsigned --yes {first}\n"
        + "".join(f"  {d[:12]}  pickle, {store.objects.manifest(d)['size']} B\n" for d in sorted((model, other)))
    )
    assert "--yes goes with --sign-unsigned" in refused("--yes", first)
    assert "--yes needs the set the listing printed" in refused("--sign-unsigned", "--yes")
    # --sign-unsigned never runs with gc's other options, which it would ignore: one line, nothing signed
    for extra in (
        ["--dry-run"],
        ["--keep-last", "0"],
        ["--older-than", "1d"],
        ["--max-size", "1GB"],
        ["--keep-last", "1", "--set-policy"],
        ["--keep", "last"],
        ["--no-keep-best"],
        ["--show-policy"],
    ):
        err = refused("--sign-unsigned", "--yes", first, *extra)
        assert f"--sign-unsigned cannot go with {extra[0]}" in err, err
    # a value that appears after the listing is not signed with the set the user saw
    _cells(ip, ["%%step make2\nplanted = {'c': 5}\n"])
    planted = run_ok(ip, "%compile_run --quiet").steps["make2"].outputs["planted"]["hash"]
    (store.objects._path(planted) / "manifest.sig").unlink()
    err = refused("--sign-unsigned", "--yes", first)
    assert "the unsigned values changed since that listing" in err and "nothing signed" in err
    assert not store.objects.signed(planted)
    second = re.search(r"--yes ([0-9a-f]{12})", listing()).group(1)
    assert second != first
    capsys.readouterr()
    assert main(["gc", "--sign-unsigned", "--yes", second]) == 0
    out = capsys.readouterr().out.splitlines()
    size = sum(store.objects.manifest(d)["size"] for d in (model, planted))
    assert out[0] == f"gc --sign-unsigned: signed 2 values (pickle, {size} B); 1 corrupt removed instead"
    assert sorted(line for line in out if line.startswith("  signed ")) == sorted(
        f"  signed {d[:12]}  pickle, {store.objects.manifest(d)['size']} B" for d in (model, planted)
    )
    assert store.objects.get(model, "model") == {"weights": [1, 2, 3]}
    assert not broken.exists() and not store.objects.exists(other)
    assert main(["gc", "--verify", "--sign-unsigned"]) == 0
    assert capsys.readouterr().out == (
        "gc --verify: 2 values checked, 0 corrupt removed, 0 cache entries dropped\n"
        "gc --sign-unsigned: every value that could run code on load is signed\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_nbmagic_tune_on_a_signal_stops_its_trials(tmp_path, sig):
    pids, hold = _held_trials(tmp_path)
    notebook = write_notebook(tmp_path / "tune.ipynb", _tune_cells(pids, hold)[1:])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbmagic.cli",
            "tune",
            str(notebook),
            "--param",
            "c=double(0,6)",
            "--algorithm",
            "random",
        ]
        + ["--seed", "0", "--max-trials", "4", "--parallel", "2", "--name", "ctrlc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = _started_trials(pids, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == (130 if sig == signal.SIGINT else 143)
    assert "Traceback" not in out + err and "Error" not in err
    assert err == "[ctrlc] stopping: running trials end, finished ones are kept\n"
    assert _gone_soon(started), "a trial's step or its child outlived the command"
    runs = [r for r in RunStore().list_runs() if r.experiment == "ctrlc"]
    assert sorted(r.status for r in runs) == ["stopped", "stopped"]
