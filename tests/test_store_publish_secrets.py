"""A compiled step never publishes a value holding one of its secrets to the shared store: the step's secret
names (never values) are compiled in, and the pod keeps out what the local runner keeps out."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from helpers.store_homes import demo_plan, home_store
from nbmagic.runtime import marshal
from nbmagic.runtime.component import nbmagic_run
from nbmagic.runtime.store_secrets import MARK

SECRET = "hunter2-very-secret-Zq9"


def _grep(root, text: str = SECRET) -> str:  # noqa: ANN001
    return subprocess.run(["grep", "-rl", text, str(root)], capture_output=True, text=True).stdout


def test_the_compiled_store_target_names_the_steps_secrets_and_holds_no_value(monkeypatch):
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import SecretEnv, SecretFile, StepSettings

    monkeypatch.setenv("DB_PASSWORD", SECRET)
    settings = StepSettings(
        store="file:///shared/runs",
        secret_env=(SecretEnv("db-creds", "password", "DB_PASSWORD"),),
        secret_files=(SecretFile("tls", "/etc/tls"),),
    )
    text = compile_pipeline(demo_plan(), defaults=settings)
    assert "'secret_env': ['DB_PASSWORD']" in text and "'secret_files':" in text and "['/etc/tls']" in text
    assert SECRET not in text


def test_a_step_keeps_values_holding_its_secrets_out_of_the_store(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared"
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "token").write_text("file-token-Yp4w\n")
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    target = {
        "uri": f"file://{shared}",
        "run": "run-sec",
        "pipeline": "p",
        "steps": ["a", "b"],
        "dag": {"a": [], "b": ["a"]},
        "secret_env": ["DB_PASSWORD"],
        "secret_files": [str(tls)],
    }
    outs = {n: SimpleNamespace(path=str(tmp_path / f"art_{n}"), metadata={}) for n in ("url", "tok", "n")}
    code = (
        "import os\nurl = 'postgres://u:' + os.environ['DB_PASSWORD'] + '@db'\n"
        f"tok = {{'t': open({str(tls / 'token')!r}).read().strip()}}\nn = 3\n"
    )
    with pytest.raises(SystemExit):  # as the local runner: a later step reads url, so the step fails
        nbmagic_run("a", "cell 1", code, "", {}, {}, outs, store=target)
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "holds a secret" in line] == [
        f"nbmagic: step 'a': variable 'url' holds a secret: not recorded in file://{shared}",
        f"nbmagic: step 'a': variable 'tok' holds a secret: not recorded in file://{shared}",
        "nbmagic: step 'a': variable 'url' holds a secret and is not passed to the steps that read it (read the "
        "secret in the step that uses it)",
    ]
    assert not any((tmp_path / f"art_{n}").exists() for n in ("url", "tok", "n")), "no artifact is left for KFP"
    # a later step given a held value (as a pipeline compiled before this rule passes it on) fails the same way
    held = tmp_path / "held_url"
    held.mkdir()
    marshal.save("postgres://u:" + SECRET + "@db", held, "url")
    (held / MARK).write_bytes(b"")
    out_b = SimpleNamespace(path=str(tmp_path / "art_m"), metadata={})
    with pytest.raises(SystemExit):
        nbmagic_run("b", "cell 2", "m = len(url)\n", "", {}, {"url": SimpleNamespace(path=str(held))}, {"m": out_b},
                    store=target)  # fmt: skip
    assert "input 'url' holds a secret and is not passed to the steps that read it" in capsys.readouterr().err
    assert _grep(shared) == _grep(shared, "file-token-Yp4w") == "", "no file of the store holds a secret"
    reader = home_store(tmp_path, "reader")
    assert [r.id for r in reader.list_runs()] == ["run-sec"]
    steps = {
        e["step"]: e["state"]
        for r in shared.glob("runs/*run-sec-*")
        for e in json.loads(r.read_text())["record"]["executions"]
    }
    assert steps == {"a": "failed", "b": "failed"}
