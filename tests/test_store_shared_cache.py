"""Cache entries and step logs shared through the S3 store (moto on 127.0.0.1): a step computed in one home is a
cache hit in another, verified before it is taken; a tampered entry or value is a miss in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.plans import step
from helpers.store_homes import home_store, shared_folder
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner


def _plan(marker: Path) -> PipelinePlan:
    """``make`` leaves a line in ``marker`` each time it really runs."""
    make = step(
        "make",
        f"import numpy as np\nopen({str(marker)!r}, 'a').write('ran\\n')\nprint('making x')\n"
        "x = np.arange(5, dtype='float64')\ntotal = float(x.sum())",
        outputs=("x", "total"),
        metrics=("total",),
    )
    use = step(
        "use",
        f"open({str(marker)!r}, 'a').write('used\\n')\nprint('using', len(x))\nn = len(x) * 2",
        inputs={"x": "make"},
        outputs=("n",),
        index=2,
    )
    return PipelinePlan("shared", (make, use), {}, ("total",))


def test_a_step_computed_in_one_home_is_a_verified_cache_hit_in_another(tmp_path, s3_store):
    marker = tmp_path / "marker.txt"
    alice = home_store(tmp_path, "alice")
    first = LocalRunner(alice).run(_plan(marker))
    assert first.status == "done" and marker.read_text() == "ran\nused\n"
    assert any(k.split("/", 3)[2] == "cache" for k in s3_store.keys()), "entries published"

    bob = home_store(tmp_path, "bob")
    second = LocalRunner(bob).run(_plan(marker))
    assert second.status == "done"
    assert marker.read_text() == "ran\nused\n"  # neither step ran in bob's home
    assert [s.status for s in second.steps.values()] == ["cached", "cached"]
    assert second.metrics == {"total": 10.0}
    assert list(bob.objects.get(second.steps["make"].outputs["x"]["hash"])) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # lineage: bob's cached step points at alice's execution, imported into bob's index
    from nbmagic.store.lineage import execution

    (row,) = [r for r in bob.step_rows(second.id) if r["step"] == "make"]
    reused = json.loads(row["properties"])["reused_execution"]
    assert execution(bob, reused).run_id == first.id
    carol = home_store(tmp_path, "carol")  # and in a third home, which imports bob's run
    carol.sync(force=True)
    (row,) = [r for r in carol.step_rows(second.id) if r["step"] == "make"]
    assert execution(carol, json.loads(row["properties"])["reused_execution"]).run_id == first.id
    # alice's step logs read from bob's home
    from nbmagic.api import logs

    assert "making x" in logs(first.id, "make", root=bob.root)
    assert "using 5" in logs(first.id, "use", root=bob.root)
    from nbmagic.errors import NbMagicError

    with pytest.raises(NbMagicError, match=f"computed in run {first.id}"):
        logs(second.id, "make", root=bob.root)  # a step taken from the cache printed nothing
    import subprocess
    import sys

    fresh = tmp_path / "erin" / "store"  # the command line, from a home that has seen nothing yet
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "logs", first.id, "use", "--store", str(fresh)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "using 5\n", done.stderr


def test_a_tampered_shared_entry_or_value_is_a_miss_and_the_step_runs(tmp_path, s3_store, capsys):
    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    client, prefix = s3_store.client(), "team/runs/"
    entries = [k for k in s3_store.keys(prefix + "cache/")]
    assert len(entries) == 2
    for key in entries:  # a different metric, the signature left as it was
        body = json.loads(client.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read())
        if body["entry"]["step"] == "make":
            body["entry"]["metrics"]["total"] = 99.0
            client.put_object(Bucket=s3_store.bucket, Key=key, Body=json.dumps(body).encode())
    bob = home_store(tmp_path, "bob")
    run = LocalRunner(bob).run(_plan(marker))
    assert [s.status for s in run.steps.values()] == ["done", "cached"]  # use's inputs are the same value
    assert run.metrics == {"total": 10.0}
    err = capsys.readouterr().err
    assert err.count("not signed with the team key") == 1 and "step 'make'" not in err  # one line, no crash
    assert marker.read_text() == "ran\nused\nran\n"

    # a value whose bytes were changed: the entry verifies, the value does not; a miss
    carol = home_store(tmp_path, "carol")
    x_hash = run.steps["make"].outputs["x"]["hash"]
    (data_key,) = [
        k for k in s3_store.keys(f"{prefix}objects/{x_hash[:2]}/{x_hash}/") if not k.endswith(("json", "sig"))
    ]
    blob = bytearray(client.get_object(Bucket=s3_store.bucket, Key=data_key)["Body"].read())
    blob[-1] ^= 0xFF
    client.put_object(Bucket=s3_store.bucket, Key=data_key, Body=bytes(blob))
    again = LocalRunner(carol).run(_plan(marker))
    assert again.status == "done" and again.steps["make"].status == "done"
    assert "corrupt" in capsys.readouterr().err
    assert marker.read_text().count("ran") == 3


@pytest.mark.parametrize("cap", ["200"])
def test_published_logs_are_bounded_and_never_carry_the_stores_key(tmp_path, s3_store, monkeypatch, cap):
    from nbmagic.store.shared_logs import step_log

    monkeypatch.setenv("NBMAGIC_SHARED_LOG_CAP", cap)
    code = f"print('key:', {s3_store.key!r})\nprint('x' * 5000)\nv = 1"  # a step that prints the team key
    plan = PipelinePlan("loud", (step("loud", code, outputs=("v",)),), {}, ())
    run = LocalRunner(home_store(tmp_path, "alice")).run(plan)
    assert run.status == "done"
    text = step_log(home_store(tmp_path, "bob"), run.id, "loud")
    assert text is not None and s3_store.key not in text and "key: ***" in text
    assert "bytes cut" in text and len(text.encode()) < 400


def test_no_secret_nor_its_fingerprint_reaches_the_shared_store(tmp_path, s3_store, monkeypatch):
    from dataclasses import replace

    from nbmagic.pipeline.settings import SecretEnv, StepSettings
    from nbmagic.runtime.step import fingerprint

    secret = "hunter2-" + "s3cr3t"
    monkeypatch.setenv("API_TOKEN", secret)
    uses = step(
        "uses",
        "print('token is', token)\nn = len(token)\ncopy = token",
        outputs=("n",),
        prelude="import os\ntoken = os.environ['API_TOKEN']",
    )
    uses = replace(
        uses,
        writes=("n", "copy"),  # assigned, read by no later step: not kept, said so
        carried=(("demo.ipynb cell 1", "token"),),
        settings=StepSettings(secret_env=(SecretEnv("api", "token", "API_TOKEN"),)),
    )
    alice = home_store(tmp_path, "alice")
    run = LocalRunner(alice).run(PipelinePlan("secretive", (uses,), {}, ()))
    assert run.status == "done", run.error
    assert run.steps["uses"].not_kept == {"copy": "holds a secret"}
    keys = s3_store.keys()
    assert any("/cache/" in k for k in keys) and any("/logs/" in k for k in keys)
    client = s3_store.client()
    stored = b"".join(client.get_object(Bucket=s3_store.bucket, Key=k)["Body"].read() for k in keys)
    assert secret.encode() not in stored and b"token is ***" in stored
    assert fingerprint(secret).encode() not in stored
    (entry,) = [k for k in keys if "/cache/" in k]
    body = json.loads(client.get_object(Bucket=s3_store.bucket, Key=entry)["Body"].read())["entry"]
    assert body["carried"] == {"token": None} and body["not_kept"] == {"copy": "holds a secret"}


def test_shared_gc_removes_the_entries_and_logs_of_the_runs_it_drops(tmp_path, s3_store):
    from nbmagic.store.gc import Policy, collect

    marker = tmp_path / "marker.txt"
    alice = home_store(tmp_path, "alice")
    old = LocalRunner(alice).run(_plan(marker))
    other = PipelinePlan("shared", (step("solo", "print('solo here')\nv = 3", outputs=("v",)),), {}, ())
    kept = LocalRunner(alice).run(other)

    def listing() -> tuple[list[str], list[str]]:
        keys = s3_store.keys("team/runs/")
        return [k for k in keys if "/cache/" in k], [k for k in keys if "/logs/" in k]

    entries, logs = listing()
    assert len(entries) == 3 and len(logs) == 2 + 3  # two indexes, three distinct logs
    report = collect(home_store(tmp_path, "bob"), Policy(keep_last=1), shared=True, grace=0)
    assert [run_id for run_id, *_ in report.runs] == [old.id]
    entries, logs = listing()
    assert len(entries) == 1 and len(logs) == 2  # the kept run's entry, index and log
    from nbmagic.api import logs as read_log

    assert "solo here" in read_log(kept.id, "solo", root=tmp_path / "carol" / "store")
    again = LocalRunner(home_store(tmp_path, "dave")).run(_plan(marker))
    assert [s.status for s in again.steps.values()] == ["done", "done"]  # a miss, not an error


def test_a_shared_folder_shares_cache_hits_and_logs_too(tmp_path, monkeypatch):
    shared_folder(tmp_path, monkeypatch)
    marker = tmp_path / "marker.txt"
    first = LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    bob = home_store(tmp_path, "bob")
    second = LocalRunner(bob).run(_plan(marker))
    assert [s.status for s in second.steps.values()] == ["cached", "cached"] and second.metrics == {"total": 10.0}
    assert marker.read_text() == "ran\nused\n"
    from nbmagic.store.shared_logs import step_log

    assert step_log(bob, first.id, "make") == "making x\n"
    shared = tmp_path / "shared"
    assert all(p.stat().st_mode & 0o077 == 0 for p in (shared / "cache").rglob("*"))  # owner-only, as values
    assert all(p.stat().st_mode & 0o077 == 0 for p in (shared / "logs").rglob("*"))


def test_a_store_that_fails_while_entries_are_written_is_one_line_and_the_run_stays_shared(tmp_path, s3_store, capsys):
    from nbmagic.store.backends import RemoteError

    marker = tmp_path / "marker.txt"
    alice = home_store(tmp_path, "alice")
    backend = alice.remote.backend
    put_bytes = backend.put_bytes

    def failing(key: str, data: bytes, if_absent: bool = False) -> bool:
        if key.startswith("cache/"):
            raise RemoteError(f"the run store {s3_store.uri}: cannot write {key}: network error (cut)")
        return put_bytes(key, data, if_absent)

    backend.put_bytes = failing
    try:
        run = LocalRunner(alice).run(_plan(marker))
    finally:
        del backend.put_bytes
    assert run.status == "done"
    err = capsys.readouterr().err
    assert err.count(f"run {run.id} is in {s3_store.uri} but its cache entries or step logs are not") == 1, err
    bob = home_store(tmp_path, "bob")
    assert [r.id for r in bob.list_runs()] == [run.id]
    again = LocalRunner(bob).run(_plan(marker))
    assert [s.status for s in again.steps.values()] == ["done", "done"]  # no entry: the steps run
