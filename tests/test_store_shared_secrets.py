"""A step's ``--secret`` value never reaches the shared store nor the log on disk, whatever the step's outcome:
timed out, crashed, or failing on a value it cannot keep (moto on 127.0.0.1)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.pipeline.settings import SecretEnv, StepSettings
from nbmagic.run.local import LocalRunner
from nbmagic.store.runs import RunStore

SECRET = "tok-SUPERSECRET-12345"


def _secret_step(code: str, **settings) -> PipelinePlan:
    leak = step("leak", code, outputs=("x",))
    leak = replace(leak, settings=StepSettings(secret_env=(SecretEnv("creds", "token", "API_TOKEN"),), **settings))
    return PipelinePlan("p", (leak,), {}, ())


def _everything_stored(s3_store, home: Path, run_id: str) -> bytes:
    client = s3_store.client()
    remote = b"".join(client.get_object(Bucket=s3_store.bucket, Key=k)["Body"].read() for k in s3_store.keys())
    local = b"".join(p.read_bytes() for p in (home / "runs" / run_id).rglob("*") if p.is_file())
    return remote + local


@pytest.mark.parametrize(
    ("code", "settings", "status"),
    [
        # the review's scenario: the step prints its secret, then is stopped by its timeout
        ("print('token is', os.environ['API_TOKEN'], flush=True)\ntime.sleep(30)\nx = 1", {"timeout": 2}, "timed_out"),
        # a crash: the worker's child ends without writing its result
        ("print('token is', os.environ['API_TOKEN'], flush=True)\nos._exit(3)\nx = 1", {}, "failed"),
    ],
    ids=["timeout", "crash"],
)
def test_a_step_that_times_out_or_crashes_leaves_no_secret_in_its_log_nor_the_store(
    tmp_path, s3_store, monkeypatch, code, settings, status
):
    monkeypatch.setenv("API_TOKEN", SECRET)
    alice = RunStore(tmp_path / "alice" / "store")
    run = LocalRunner(alice).run(_secret_step("import os, time\n" + code, **settings))
    assert run.steps["leak"].status == status
    (row,) = alice.step_rows(run.id)
    log = Path(row["log"]).read_text()
    assert "token is ***" in log and SECRET not in log
    assert any("/logs/blobs/" in k for k in s3_store.keys()), "the failed step's log is shared"
    assert SECRET.encode() not in _everything_stored(s3_store, alice.root, run.id)


def test_a_secret_in_the_log_is_masked_again_when_published(tmp_path, s3_store, monkeypatch):
    """A log written with the secret in it (by anything) is masked when it goes to the shared store."""
    from nbmagic.store.shared_logs import publish_run

    monkeypatch.setenv("API_TOKEN", SECRET)
    alice = RunStore(tmp_path / "alice" / "store")
    run = LocalRunner(alice).run(_secret_step("x = 1"))
    (row,) = alice.step_rows(run.id)
    Path(row["log"]).write_text(f"printed later: {SECRET}\n")
    from nbmagic.store import shared_logs

    monkeypatch.setattr(
        shared_logs, "_secrets", set(), raising=False
    )  # a later process: only the record's names are known
    assert publish_run(alice, run.id) == 1
    stored = b"".join(
        s3_store.client().get_object(Bucket=s3_store.bucket, Key=k)["Body"].read() for k in s3_store.keys()
    )
    assert SECRET.encode() not in stored and b"printed later: ***" in stored


def test_a_value_that_cannot_be_kept_is_named_by_its_type_not_by_its_error_text(tmp_path, s3_store, monkeypatch):
    monkeypatch.setenv("API_TOKEN", SECRET)
    code = (
        "import os\nclass Holder:\n    def __init__(self, t):\n        self.t = t\n"
        "    def __reduce__(self):\n        raise TypeError('cannot pickle holder of ' + self.t)\n"
        "h = Holder(os.environ['API_TOKEN'].upper() + '-derived')\nx = 1"
    )
    plan = _secret_step(code)
    leak = replace(plan.steps[0], writes=("x", "h"))
    alice = RunStore(tmp_path / "alice" / "store")
    run = LocalRunner(alice).run(PipelinePlan("p", (leak,), {}, ()))
    assert run.status == "done", run.error
    reason = run.steps["leak"].not_kept["h"]
    assert "Holder" in reason and "TOKEN" not in reason.upper().replace("HOLDER", "")
    derived = SECRET.upper().encode()
    assert derived not in _everything_stored(s3_store, alice.root, run.id)
    (row,) = alice.step_rows(run.id)
    assert "derived" not in json.loads(row["properties"])["not_kept"]["h"]


def test_a_stopped_run_leaves_no_secret_in_its_killed_steps_log_nor_the_store(tmp_path, s3_store, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("API_TOKEN", SECRET)
    alice = RunStore(tmp_path / "alice" / "store")
    flag = tmp_path / "printed"
    code = f"import os, time\nprint('token is', os.environ['API_TOKEN'], flush=True)\nopen({str(flag)!r}, 'w')\ntime.sleep(60)\nx = 1"
    stop = threading.Event()
    result = {}
    worker = threading.Thread(target=lambda: result.update(run=LocalRunner(alice).run(_secret_step(code), stop=stop)))
    worker.start()
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(60)
    run = result["run"]
    assert run.status == "stopped" and run.steps["leak"].status == "stopped"
    (row,) = alice.step_rows(run.id)
    log = (alice.run_dir(run.id) / "leak.log").read_text()
    assert "token is ***" in log and SECRET not in log
    assert SECRET.encode() not in _everything_stored(s3_store, alice.root, run.id)


def test_a_crashing_step_leaves_no_secret_file_content_in_its_log_nor_the_store(tmp_path, s3_store):
    from nbmagic.pipeline.settings import SecretFile

    mount = tmp_path / "mount"
    mount.mkdir()
    (mount / "token").write_text(SECRET + "\n")
    code = (
        f"print('token is', open({str(mount / 'token')!r}).read().strip(), flush=True)\nimport os\nos._exit(3)\nx = 1"
    )
    leak = replace(
        step("leak", code, outputs=("x",)), settings=StepSettings(secret_files=(SecretFile("creds", str(mount)),))
    )
    alice = RunStore(tmp_path / "alice" / "store")
    run = LocalRunner(alice).run(PipelinePlan("p", (leak,), {}, ()))
    assert run.steps["leak"].status == "failed"
    log = (alice.run_dir(run.id) / "leak.log").read_text()
    assert "token is ***" in log and SECRET not in log
    assert any("/logs/blobs/" in k for k in s3_store.keys())
    assert SECRET.encode() not in _everything_stored(s3_store, alice.root, run.id)
