"""Shared step logs (moto on 127.0.0.1): a Google key's contents are masked, a log printed by `nbmagic logs`
carries no terminal escape sequences, and one unreadable log index does not stop log gc."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store.runs import RunStore

PEM_BODY = [
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
    "Zq9Jh3c0mF1uYwQb5d7Xy2kLpQ8rTs6vNn4oPa1eBc9dEf0gHi",
]


def _one_step(code: str) -> PipelinePlan:
    return PipelinePlan("hygiene", (step("loud", code, outputs=("v",)),), {}, ())


def _stored(s3_store) -> bytes:
    client = s3_store.client()
    return b"".join(client.get_object(Bucket=s3_store.bucket, Key=k)["Body"].read() for k in s3_store.keys())


def test_a_printed_google_key_file_is_masked_in_the_published_log(tmp_path, s3_store, monkeypatch):
    key_file = tmp_path / "sa.json"
    private = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END PRIVATE KEY-----\n"
    key_file.write_text(
        json.dumps({"type": "service_account", "private_key_id": "0123456789abcdef", "private_key": private})
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    code = f"print(open({str(key_file)!r}).read())\nprint(json.loads(open({str(key_file)!r}).read())['private_key'])\nv = 1"
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(_one_step("import json\n" + code))
    assert run.status == "done", run.error
    stored = _stored(s3_store)
    assert any("/logs/blobs/" in k for k in s3_store.keys())
    for secret in (*PEM_BODY, "0123456789abcdef"):
        assert secret.encode() not in stored, secret


def test_nbmagic_logs_writes_no_escape_sequences(tmp_path, s3_store):
    code = "print('title\\x1b]0;pwned\\x07 clear\\x1b[2J red\\x1b[31mX\\x1b[0m\\tend\\rhidden')\nv = 1"
    run = LocalRunner(RunStore(tmp_path / "alice" / "store")).run(_one_step(code))
    assert run.status == "done", run.error
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "logs", run.id, "loud", "--store", str(tmp_path / "bob" / "store")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "title clear redX\tend\nhidden\n"


def test_one_unreadable_log_index_does_not_stop_log_gc(tmp_path, s3_store):
    from nbmagic.store.shared_logs import sweep

    alice = RunStore(tmp_path / "alice" / "store")
    good = LocalRunner(alice).run(_one_step("print('good')\nv = 1"))
    bad = LocalRunner(alice).run(_one_step("print('bad')\nv = 2"))
    client, prefix = s3_store.client(), "team/runs/"
    client.put_object(Bucket=s3_store.bucket, Key=f"{prefix}logs/runs/{bad.id}.json", Body=b"{not json")
    orphan = f"{prefix}logs/blobs/ab/{'ab' * 32}"
    client.put_object(Bucket=s3_store.bucket, Key=orphan, Body=b"left by a publish that never wrote its index")
    removed = sweep(alice.remote, {good.id, bad.id}, grace=0)
    keys = s3_store.keys(prefix + "logs/")
    assert orphan not in keys and removed >= 1
    assert f"{prefix}logs/runs/{good.id}.json" in keys
    from nbmagic.store.shared_logs import step_log

    assert step_log(RunStore(tmp_path / "carol" / "store"), good.id, "loud") == "good\n"
