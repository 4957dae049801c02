"""A secret inside a frame whose parquet file is compressed (the bytes no longer show it) is still kept out of the
store: by a compiled step's pod (outputs and inputs) and by the local runner, which both search the value in
memory as well as its files."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers.shell import run_ok
from helpers.store_homes import home_store
from nbmagic.restore import state_after
from nbmagic.runtime.component import nbmagic_run
from nbmagic.runtime.secret_search import ENCODINGS, holds_secret
from nbmagic.store.objects import ObjectStore, SecretValue

SECRET = "sk-live-4f9a2c7e1b8d"  # keys sharing its prefix: a compressor writes it as a back-reference
FRAME = "keys = pd.DataFrame({'key': [f'sk-live-4f9a2c7e{i:04d}' for i in range(300)] + [os.environ['API_KEY']]})\n"


def _bytes_hold(root: Path, text: str = SECRET) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(text.encode(e) in p.read_bytes() for e in ENCODINGS)]


def _grep(root: Path) -> str:
    return subprocess.run(["grep", "-rl", SECRET, str(root)], capture_output=True, text=True).stdout


@pytest.fixture(params=["snappy", "zstd"])
def compressed(request, monkeypatch):
    """Parquet files written with ``request.param`` compression, whatever the marshal asks for."""
    real = pq.write_table
    monkeypatch.setattr(pq, "write_table", lambda *a, **kw: real(*a, **{**kw, "compression": request.param}))
    return request.param


def _target(shared: Path, run: str, step: str, secret_env: list[str]) -> dict:
    return {
        "uri": f"file://{shared}",
        "run": run,
        "pipeline": "p",
        "steps": [step],
        "dag": {step: []},
        "secret_env": secret_env,
    }


def test_a_compiled_step_keeps_a_compressed_frame_holding_its_secret_out(compressed, tmp_path, monkeypatch, capsys):
    import os

    from nbmagic.runtime import marshal

    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    monkeypatch.setenv("API_KEY", SECRET)
    frame: dict = {"pd": pd, "os": os}
    exec(FRAME, frame)  # noqa: S102 - the step's own frame, saved as the step saves it
    (tmp_path / "probe").mkdir()
    marshal.save(frame["keys"], str(tmp_path / "probe"), "keys")
    assert _bytes_hold(tmp_path / "probe") == [], "the compressed file hides the secret from a byte search"
    target = _target(shared, "run-pq", "a", ["API_KEY"])
    outs = {n: SimpleNamespace(path=str(tmp_path / f"art_{n}"), metadata={}) for n in ("keys", "n")}
    with pytest.raises(SystemExit):  # as the local runner: a later step reads keys, so the step fails
        nbmagic_run(
            "a", "cell 1", "import os\nimport pandas as pd\n" + FRAME + "n = 3\n", "", {}, {}, outs, store=target
        )
    lines = [line for line in capsys.readouterr().err.splitlines() if "holds a secret" in line]
    assert lines[0] == f"nbmagic: step 'a': variable 'keys' holds a secret: not recorded in file://{shared}"
    assert "variable 'keys' holds a secret and is not passed to the steps that read it" in lines[-1]
    assert _grep(shared) == ""
    reader = home_store(tmp_path, "reader")
    assert [r.id for r in reader.list_runs()] == ["run-pq"]  # synced from the shared store: the step failed
    assert reader.list_runs()[0].status == "failed"


def test_a_compiled_step_keeps_a_compressed_input_holding_its_secret_out(compressed, tmp_path, monkeypatch, capsys):
    # step a has no secret (its frame is published); step b has it, and does not publish the frame as its input
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    monkeypatch.setenv("API_KEY", SECRET)
    keys = SimpleNamespace(path=str(tmp_path / "art_keys"), metadata={})
    nbmagic_run(
        "a",
        "cell 1",
        "import os\nimport pandas as pd\n" + FRAME,
        "",
        {},
        {},
        {"keys": keys},
        store=_target(shared, "run-a", "a", []),
    )
    assert keys.metadata["format"] == "parquet" and _bytes_hold(Path(keys.path)) == []
    out_m = SimpleNamespace(path=str(tmp_path / "art_m"), metadata={})
    target = _target(shared / "b", "run-b", "b", ["API_KEY"])
    nbmagic_run("b", "cell 2", "m = len(keys)\n", "", {}, {"keys": keys}, {"m": out_m}, store=target)
    lines = [line for line in capsys.readouterr().err.splitlines() if "holds a secret" in line]
    assert lines == [f"nbmagic: step 'b': input 'keys' holds a secret: not recorded in file://{shared / 'b'}"]
    assert _grep(shared / "b") == ""
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{shared / 'b'}")
    reader = home_store(tmp_path, "reader")
    assert [r.id for r in reader.list_runs()] == ["run-b"]
    assert set(state_after(reader, "run-b", "b").items) == {"m"}


def test_the_local_store_refuses_the_same_compressed_frame(compressed, tmp_path, monkeypatch):
    # what the local runner's worker calls for each value (the fixture's patch does not reach that process)
    namespace: dict = {}
    monkeypatch.setenv("API_KEY", SECRET)
    exec("import os\nimport pandas as pd\n" + FRAME, namespace)
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(SecretValue, match="variable 'keys' holds a secret"):
        store.put(namespace["keys"], "keys", secrets=(SECRET,))
    assert store.put(namespace["keys"], "keys").format == "parquet"  # without the secret named: stored, compressed
    assert _bytes_hold(tmp_path) == []


def test_the_local_runner_refuses_the_same_frame(ip, capsys, monkeypatch, nbmagic_home):
    # through the worker, with the marshal's own parquet file
    monkeypatch.setenv("API_KEY", SECRET)
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step s --secret api:token=API_KEY\nimport os\nimport pandas as pd\n" + FRAME + "n = 1\n")
    assert "variable 'keys' holds a secret" in capsys.readouterr().out
    assert _bytes_hold(Path(nbmagic_home)) == []


@pytest.mark.parametrize(
    "value",
    [
        pd.DataFrame({"k": pd.array(["x", "Bearer " + SECRET], dtype="string")}),
        pd.DataFrame({"k": pd.Categorical(["x", "Bearer " + SECRET])}),
        pd.DataFrame({"v": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", SECRET), ("b", "c")])),
        pd.DataFrame({SECRET: [1.0]}),
        pd.Series([1], name=SECRET),
        SimpleNamespace(conf={"headers": [("auth", SECRET.encode("utf-16-le"))]}),
    ],
    ids=["string-column", "categories", "index-level", "column-name", "series-name", "object-attribute"],
)
def test_the_value_walk_finds_a_secret_anywhere_in_a_frame_or_object(value):
    assert holds_secret(value, ("other-secret", SECRET))
    assert not holds_secret(value, ("not-there-at-all",))
