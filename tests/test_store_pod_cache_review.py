"""A compiled step's store cache and secret hold-back, driven through ``nbmagic_run`` on a file:// store."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from types import SimpleNamespace

import pytest

from nbmagic.runtime import component, marshal, podcache
from nbmagic.runtime.component import nbmagic_run
from nbmagic.runtime.store_secrets import MARK

SECRET = "hunter2-very-secret-token"


class _Metrics:
    def log_metric(self, name, value):
        pass


@pytest.fixture
def team_key(monkeypatch):
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "team-key-for-tests-0123456789")


def _value(tmp_path, name, value, marked=False):
    folder = tmp_path / f"in-{name}"
    folder.mkdir()
    marshal.save(value, folder, name)
    if marked:  # an upstream --secret step's output, held back and marked by its pod
        (folder / MARK).write_bytes(b"")
    return folder


def _run(tmp_path, n, code, inputs, out="y", watch=(), cache=True, step="s", **target):
    root = tmp_path / "store"
    nbmagic_run(
        step=step,
        label="c",
        code=code,
        prelude="",
        parameters={},
        inputs={name: SimpleNamespace(path=str(folder), metadata={}) for name, folder in inputs.items()},
        outputs={out: SimpleNamespace(path=str(tmp_path / f"run{n}" / out), metadata={})},
        metric_names=(),
        metrics=_Metrics(),
        watch=watch,
        store={"uri": f"file://{root}", "run": f"run-{n}", "pipeline": "p", "steps": [step], "dag": {step: []},
               "cache": cache, **target},
    )  # fmt: skip
    return root


def _leaked(root, secret=SECRET):
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_failed_place_leaves_no_heartbeat_beating(tmp_path, team_key, monkeypatch):
    x = _value(tmp_path, "x", [1, 2, 3])
    _run(tmp_path, 1, "y = [v * 2 for v in x]", {"x": x})

    def no_space(hit, outputs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(podcache, "place", no_space)
    _run(tmp_path, 2, "y = [v * 2 for v in x]", {"x": x})
    alive = [t for t in threading.enumerate() if t.name == "nbmagic-heartbeat"]
    assert not alive, f"{len(alive)} heartbeat thread(s) still beating after the step's record"


def test_a_hit_never_publishes_an_input_an_earlier_step_held_back(tmp_path, team_key, capsys):
    token = _value(tmp_path, "token", SECRET, marked=True)
    for n in (1, 2):
        with pytest.raises(SystemExit):
            _run(tmp_path, n, "y = len(token)", {"token": token})
        assert not _leaked(tmp_path / "store"), f"after run {n}: the secret is in the store"
    assert "input 'token' holds a secret and is not passed to the steps that read it" in capsys.readouterr().err
    assert not list((tmp_path / "store").glob("podcache/*/*.json")), "a cache entry for a step with a held input"


def test_a_hit_with_a_marked_input_leaves_it_out_of_the_record(tmp_path, team_key, capsys):
    x = _value(tmp_path, "x", [1, 2, 3])
    root = _run(tmp_path, 1, "y = [v * 2 for v in x]", {"x": x})
    (x / MARK).write_bytes(b"")  # the same value, now known to hold a secret: the hit's record must not name it
    found = component._store_cache(
        {"uri": f"file://{root}", "run": "run-2", "pipeline": "p", "steps": ["s"], "dag": {"s": []}, "cache": True},
        "s", "y = [v * 2 for v in x]", "", {}, {"x": SimpleNamespace(path=str(x), metadata={})},
        {"y": SimpleNamespace(path=str(tmp_path / "run2" / "y"), metadata={})}, (), None,
    )  # fmt: skip
    assert found is not None and found.hit is not None
    store = {"uri": f"file://{root}", "run": "run-2", "pipeline": "p", "steps": ["s"], "dag": {"s": []}}
    taken = component._take_hit(
        store, "s", found, {"y": SimpleNamespace(path=str(tmp_path / "run2" / "y"), metadata={})}, (), 0.0, {},
        {"x": SimpleNamespace(path=str(x), metadata={})}, _Metrics(), lambda: None,
    )  # fmt: skip
    assert taken
    record = json.loads(next((root / "runs").glob("*run-2-*")).read_text())["record"]
    assert record["executions"][0]["cached"] == 1
    assert "x" not in record["executions"][0]["inputs"], "the hit's record names an input held back upstream"
    assert "input 'x' holds a secret" in capsys.readouterr().err


def test_a_value_computed_from_a_held_input_is_never_published(tmp_path, team_key, capsys):
    token = _value(tmp_path, "token", SECRET.upper(), marked=True)
    with pytest.raises(SystemExit):
        _run(tmp_path, 1, "n = token.lower()", {"token": token}, out="n")
    assert not _leaked(tmp_path / "store", SECRET)
    assert not _leaked(tmp_path / "store", SECRET.upper())
    assert not (tmp_path / "run1" / "n").exists()


def test_a_secret_step_whose_output_a_later_step_reads_fails_as_locally(tmp_path, team_key, capsys, monkeypatch):
    monkeypatch.setenv("TOK", SECRET)
    with pytest.raises(SystemExit):
        _run(tmp_path, 1, "import os\ntoken = os.environ['TOK']", {}, out="token", cache=False, secret_env=["TOK"])
    root = tmp_path / "store"
    err = capsys.readouterr().err
    assert (
        "step 's': variable 'token' holds a secret and is not passed to the steps that read it (read the secret in "
        "the step that uses it)" in err
    )
    assert not _leaked(root)
    assert not (tmp_path / "run1" / "token").exists(), "the secret is left in the artifact KFP would upload"
    record = json.loads(next((root / "runs").glob("*run-1-*")).read_text())["record"]
    assert record["executions"][0]["state"] == "failed"


def test_a_pod_that_cannot_check_a_value_leaves_it_in_the_store(tmp_path, team_key, monkeypatch, capsys):
    x = _value(tmp_path, "x", [1, 2, 3])
    root = _run(tmp_path, 1, "y = [v * 2 for v in x]", {"x": x})  # y hashed with xxh3-128
    before = {p.parent.name for p in (root / "objects").rglob("manifest.json")}
    assert before
    monkeypatch.setitem(sys.modules, "xxhash", None)  # an image without xxhash
    with pytest.raises(SystemExit):  # its input cannot load here either; the lookup ran first
        _run(tmp_path, 2, "y = [v * 2 for v in x]", {"x": x})
    after = {p.parent.name for p in (root / "objects").rglob("manifest.json")}
    assert before <= after, f"good values lost their manifest: {before - after}"
    err = capsys.readouterr().err
    assert "not taken from the store's cache: cannot verify stored value 'y'" in err
    assert "left in the store" in err


def test_a_step_that_must_not_change_an_input_is_no_hit_of_one_that_may(tmp_path, team_key, capsys):
    x = _value(tmp_path, "x", [1, 2, 3])
    _run(tmp_path, 1, "x.append(4)\ny = len(x)", {"x": x})  # compiled when no later step read x from elsewhere
    with pytest.raises(SystemExit):  # recompiled: a later step reads x upstream, so the change in place fails
        _run(tmp_path, 2, "x.append(4)\ny = len(x)", {"x": x}, watch=("x",))
    assert "changes x in place" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same again, cache on: the first run's entry is not this step's
        _run(tmp_path, 3, "x.append(4)\ny = len(x)", {"x": x}, watch=("x",))
    err = capsys.readouterr().err
    assert "taken from the store's cache" not in err
    assert "changes x in place" in err


def test_no_gc_runs_between_a_hits_lookup_and_its_record(tmp_path, team_key, monkeypatch):
    x = _value(tmp_path, "x", [1, 2, 3])
    root = _run(tmp_path, 1, "y = [v * 2 for v in x]", {"x": x})
    real = podcache.lookup
    collected = []

    def lookup_then_gc(backend, *args, **kwargs):
        hit = real(backend, *args, **kwargs)
        if not backend.live("locks/writer-"):  # a gc of the store, which waits for writers: run-1 is dropped
            for record in (root / "runs").glob("*run-1-*"):
                record.unlink()
            shutil.rmtree(root / "podcache")
            shutil.rmtree(root / "objects")
            collected.append(True)
        return hit

    monkeypatch.setattr(podcache, "lookup", lookup_then_gc)
    _run(tmp_path, 2, "y = [v * 2 for v in x]", {"x": x})
    execution = json.loads(next((root / "runs").glob("*run-2-*")).read_text())["record"]["executions"][0]
    assert execution["cached"] == 1
    digest = execution["outputs"]["y"]["hash"]
    assert (root / "objects" / digest[:2] / digest / "manifest.json").exists(), f"run-2 names {digest}, now gone"
    assert not collected
    assert not list((root / "locks").glob("writer-*")), "a writer lease is left behind"


def _key_in_a_process(path_entries, image):
    """The pod key a fresh interpreter computes with ``path_entries`` first on ``sys.path`` (as a pod's)."""
    import subprocess

    script = (
        "import sys\n"
        f"sys.path[:0] = {[str(p) for p in path_entries]!r}\n"
        "from nbmagic.runtime import podcache\n"
        "print(podcache.runtime_stamp())\n"
        "print(podcache.pod_key('y = helper.f(x)', '', {}, {'x': 'a' * 32}, {}, ['y'], [],"
        f" environment=podcache.environment_tag({image!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={})
    return done.stdout.split()


def test_the_runtime_zip_a_step_carries_and_its_image_are_in_its_key(tmp_path):
    from nbmagic.compile.bundle import runtime_zip

    zipped = tmp_path / "rt" / "runtime.zip"
    zipped.parent.mkdir()
    zipped.write_bytes(runtime_zip())
    stamp, key = _key_in_a_process([zipped], "python:3.11")
    assert [stamp, key] == _key_in_a_process([zipped], "python:3.11")  # the same runtime, the same key
    assert stamp == podcache.runtime_stamp(), "the zipped runtime's stamp is not that of the same sources installed"
    assert _key_in_a_process([zipped], "team/image:v2")[1] != key, "the image is not in the key"
    import zipfile

    with zipfile.ZipFile(zipped, "a") as archive:  # a newer runtime: one more source file
        archive.writestr("nbmagic/runtime/newer.py", "VERSION = 2\n")
    newer_stamp, newer_key = _key_in_a_process([zipped], "python:3.11")
    assert newer_stamp != stamp
    assert newer_key != key, "a step run with another runtime takes the old one's values"


def test_a_step_compiled_with_a_store_names_its_image_for_its_key():
    from helpers.store_homes import demo_plan
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings

    text = compile_pipeline(
        demo_plan(),
        image="registry.example/nbmagic:7",
        runtime_image="registry.example/nbmagic:7",
        defaults=StepSettings(store="s3://team-bucket/runs"),
    )
    assert '"image":"registry.example/nbmagic:7"' in text
