"""The shared run store on Cloud Storage (``gs://``) through Google's own client, against a real Cloud Storage JSON
API server on 127.0.0.1 (fake-gcs-server, started by the tests).

Two homes share runs and values through one bucket; put-if-absent is raced by writer processes; a connection is
cut mid-upload for real (a TCP proxy in front of the server, which also carries the resumable upload's chunks);
gc and publishing exclude each other through the store's leases; bad URIs and a missing bucket or credentials
are one line each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.flaky_proxy import FlakyProxy
from helpers.gcs import GCSStore, free_port, make_bucket, start_server
from helpers.store_homes import demo_plan, home_store, scaled_mean_plan, start_writers
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.backends import RemoteError, open_backend
from nbmagic.store_uri import StoreURIError, parse

ROOT = Path(__file__).resolve().parent.parent


def test_gs_uris_are_parsed_and_bad_ones_are_one_line():
    uri = parse("gs://team_bucket.example/ml/runs/")
    assert (uri.scheme, uri.bucket, uri.prefix, str(uri)) == ("gs", "team_bucket.example", "ml/runs", str(uri))
    assert str(uri) == "gs://team_bucket.example/ml/runs" and uri.key("runs/a.json") == "ml/runs/runs/a.json"
    assert str(parse("gcs://team-bucket")) == "gs://team-bucket" and parse("gs://team-bucket").key("x") == "x"
    for bad, words in (
        ("gs://Team/x", "'Team' is not a Cloud Storage bucket name"),
        ("gs://ab/x", "'ab' is not a Cloud Storage bucket name"),
        ("gs://goog-runs/x", "no 'goog' prefix"),
        ("gs://my-google-runs/x", "not a Cloud Storage bucket name"),
        ("gs://-runs/x", "not a Cloud Storage bucket name"),
        ("gs://" + "a" * 64 + "/x", "not a Cloud Storage bucket name"),
        ("gs://bucket/a/../b", "prefix part '..'"),
        ("gs://bucket/a b", "prefix part 'a b'"),
        ("gs://key@bucket/x", "credentials and options do not go in the URI (use Application Default Credentials)"),
        ("gs://bucket/x?userProject=p", "credentials and options do not go in the URI"),
        ("gs:/bucket/x", "not a store URI"),
    ):
        with pytest.raises(StoreURIError) as caught:
            parse(bad)
        message = str(caught.value)
        assert words in message and "\n" not in message and message.startswith(f"--store {bad!r}"), message
    assert "gs://BUCKET[/PREFIX]" in str(pytest.raises(StoreURIError, parse, "ftp://host/x").value)


def test_pipeline_config_takes_a_gs_store(ip, monkeypatch):
    from helpers.shell import run_cell

    monkeypatch.setenv("NBMAGIC_STORE_URI", "")
    monkeypatch.delenv("NBMAGIC_STORE_URI")
    result = run_cell(ip, "%pipeline_config --store gs://goog-team/x")
    assert "not a Cloud Storage bucket name" in str(result.error_in_exec)
    assert "NBMAGIC_STORE_URI" not in os.environ
    run_cell(ip, "%pipeline_config --store gs://team-bucket/runs --store-secret team-gcs")
    assert os.environ["NBMAGIC_STORE_URI"] == "gs://team-bucket/runs"


def test_the_backend_operations_on_a_real_gcs_api(tmp_path, gcs_store):
    backend = open_backend(parse(gcs_store.uri))
    assert backend.put_bytes("objects/ab/x/manifest.json", b"first", if_absent=True) is True
    assert backend.put_bytes("objects/ab/x/manifest.json", b"second", if_absent=True) is False
    assert backend.get_bytes("objects/ab/x/manifest.json") == b"first"  # the existing object was kept
    assert backend.put_bytes("locks/gc-1.json", b"a") and backend.put_bytes("locks/gc-1.json", b"b")  # plain put
    assert backend.get_bytes("locks/gc-1.json") == b"b"
    assert backend.get_bytes("nothing") is None and not backend.exists("nothing")
    assert backend.exists("objects/ab/x/manifest.json")
    assert not backend.get_file("nothing", tmp_path / "nothing")
    for name in ("c", "a", "b", "b0"):
        backend.put_bytes(f"runs/{name}.json", name.encode())
    backend.put_bytes("runsx/other.json", b"z")
    listed = list(backend.list("runs/"))
    assert [b.key for b in listed] == ["runs/a.json", "runs/b.json", "runs/b0.json", "runs/c.json"]
    assert [b.size for b in listed] == [1, 1, 2, 1] and all(b.modified > 0 for b in listed)
    assert [b.key for b in backend.list("runs/", "runs/b.json")] == ["runs/b0.json", "runs/c.json"]
    assert all(k.startswith("team/runs/") for k in gcs_store.keys()), "every key is under the URI's prefix"
    # a value above 8 MiB streams up as a resumable upload, and comes back byte for byte
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 << 20))
    backend.put_file("objects/cd/y/data.bin", big)
    assert backend.get_file("objects/cd/y/data.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    backend.delete("runs/a.json")
    backend.delete("runs/a.json")  # already gone: nothing to do, as on S3
    assert [b.key for b in backend.list("runs/")] == ["runs/b.json", "runs/b0.json", "runs/c.json"]


def test_a_missing_bucket_or_missing_credentials_is_one_line(tmp_path, gcs_store, monkeypatch):
    missing = open_backend(parse("gs://nbmagic-no-such-bucket/runs"))
    for action, call in (("list /", lambda: list(missing.list(""))), ("write k", lambda: missing.put_bytes("k", b""))):
        with pytest.raises(RemoteError) as caught:
            call()
        assert (
            str(caught.value)
            == f"the run store gs://nbmagic-no-such-bucket/runs: cannot {action}: the bucket does not exist"
        )
    # no emulator, and Application Default Credentials naming a key file that is not there
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent-key.json"))
    backend = open_backend(parse(gcs_store.uri))  # made without touching the network or the credentials
    with pytest.raises(RemoteError) as caught:
        backend.exists("x")
    message = str(caught.value)
    assert message.startswith(f"the run store {gcs_store.uri}: cannot connect: no credentials") and "\n" not in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "workload identity" in message


def test_runs_and_restore_through_gcs(tmp_path, gcs_store):
    run = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan())
    assert run.status == "done", run.error
    keys = gcs_store.keys()
    assert [k for k in keys if k.startswith("team/runs/runs/") and k.endswith(f"-{run.id}.json")], keys
    assert not gcs_store.keys("team/runs/locks/"), "the writer's lease is gone once the run is published"
    record = json.loads(gcs_store.read(next(k for k in keys if k.startswith("team/runs/runs/"))))
    assert record["sig"] and gcs_store.key not in json.dumps(record)
    bob = home_store(tmp_path, "bob")
    assert [(r.id, r.status, r.metrics) for r in bob.list_runs()] == [(run.id, "done", {"total": 45.0})]
    ns: dict = {}
    report = restore(bob, run.id[:12], namespace=ns)
    assert {item.name for item in report.loaded} == {"x", "table", "total"}
    assert np.array_equal(ns["x"], np.arange(10.0)) and ns["table"] == {"n": 10, "first": 0.0}


def test_a_corrupt_value_on_gcs_is_detected_and_removed(tmp_path, gcs_store):
    from nbmagic.errors import NbMagicError

    run = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan(size=1000))
    data_key = next(k for k in gcs_store.keys() if k.endswith(".npy"))
    body = bytearray(gcs_store.read(data_key))
    body[-1] ^= 0xFF
    gcs_store.client().bucket(gcs_store.bucket).blob(data_key).upload_from_string(bytes(body))
    with pytest.raises(NbMagicError) as caught:
        restore(home_store(tmp_path, "bob"), run.id, namespace={}, names=["x"])
    assert "'x' is corrupt" in str(caught.value) and "removed from the shared store" in str(caught.value)
    assert not [k for k in gcs_store.keys() if k.startswith(data_key.rsplit("/", 1)[0])]


RACER = """
import sys, time
sys.path[:0] = [{root!r}]
from nbmagic.store.backends import open_backend
from nbmagic.store_uri import configured
backend = open_backend(configured())
backend.exists("warm-up")  # the client and its connection are made before the start
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
won = backend.put_bytes("objects/ee/race/manifest.json", ("writer " + sys.argv[1]).encode(), if_absent=True)
print("WON" if won else "KEPT", flush=True)
"""


@pytest.mark.slow
def test_put_if_absent_raced_by_writer_processes_has_one_winner(tmp_path, gcs_store):
    import time

    script = tmp_path / "racer.py"
    script.write_text(RACER.format(root=str(ROOT)))
    start = str(time.time() + 4)  # every process is up and waiting by then: they put at once
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(n), start],
            env={**os.environ, **gcs_store.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    outcome = [out.strip() for out, _ in results]
    assert sorted(outcome) == ["KEPT"] * 7 + ["WON"], outcome
    winner = outcome.index("WON")
    assert gcs_store.read("team/runs/objects/ee/race/manifest.json") == f"writer {winner}".encode()


WRITER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from helpers.plans import step
from nbmagic.pipeline.model import Parameter, PipelinePlan
from nbmagic.run.local import LocalRunner
n = int(sys.argv[1])
shared = step("base", "import numpy as np\\nbase = np.arange(50000.0)", outputs=("base",))
own = step("make", "x = base * (N + 2)\\nscore = float(N)", params=("N",), inputs={{"base": "base"}},
           outputs=("x", "score"), metrics=("score",), index=2)
plan = PipelinePlan("writers", (shared, own), {{"N": Parameter("N", 0, "int")}}, ("score",))
run = LocalRunner(workers=1).run(plan, {{"N": n}})
print(run.id, run.status, flush=True)
"""


@pytest.mark.slow
def test_writer_processes_publishing_the_same_value_at_once(tmp_path, gcs_store):
    """Six homes make the same ``base`` value (one digest) and their own ``x``, and publish at once."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    procs = start_writers(script, 6, gcs_store.env(), tmp_path)
    ids = {}
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        run_id, status = out.split()[-2:]
        # a writer starting after another published may take the shared step from the store (said in one line)
        lines = [x for x in err.splitlines() if x.startswith("nbmagic:") and "taken from the shared cache" not in x]
        assert status == "done" and not lines, err
        ids[run_id] = n
    reader = home_store(tmp_path, "reader")
    assert {r.id for r in reader.list_runs()} == set(ids)
    for run_id, n in ids.items():
        ns: dict = {}
        restore(reader, run_id, namespace=ns)
        assert ns["score"] == float(n) and np.array_equal(ns["x"], np.arange(50000.0) * (n + 2))
    manifests = [k for k in gcs_store.keys("team/runs/objects/") if k.endswith("/manifest.json")]
    assert len(manifests) == 1 + 6 * 2, manifests  # one shared base, each writer's x and score
    assert not gcs_store.keys("team/runs/locks/") and len(gcs_store.keys("team/runs/runs/")) == 6


def test_a_connection_cut_mid_upload_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    port = free_port()
    proxy = FlakyProxy(port)
    # the server hands out upload URLs on the proxy, so a resumable upload's chunks cross it too
    endpoint, server = start_server(port, external=proxy.endpoint)
    try:
        store = GCSStore(endpoint, "nbmagic-cut", "gs://nbmagic-cut/team/runs", "team-key-" + "c" * 32)
        make_bucket(endpoint, store.bucket)
        monkeypatch.setenv("NBMAGIC_STORE_URI", store.uri)
        monkeypatch.setenv("NBMAGIC_STORE_KEY", store.key)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "2")
        proxy.cut_after = 256 << 10
        alice = home_store(tmp_path, "alice")
        run = LocalRunner(alice).run(demo_plan(size=1_200_000))  # a 9.6 MB array: a resumable upload
        assert run.status == "done", run.error
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nbmagic:")]
        assert len(err) == 1, err
        assert f"run {run.id} is recorded here but not in {store.uri}" in err[0]
        assert "network error" in err[0] and "published with the next run" in err[0]
        assert proxy.cuts >= 2, "the upload was retried and cut again"
        keys = store.keys()
        assert not [k for k in keys if k.endswith(".npy") or k.startswith(("team/runs/runs/", "team/runs/locks/"))]
        folders = {k.rsplit("/", 1)[0] for k in keys}
        assert all(f"{folder}/manifest.json" in keys for folder in folders), "a value is whole or absent"
        assert home_store(tmp_path, "bob").list_runs() == []  # nothing half-published is visible
        proxy.cut_after = None  # the network is back: the next run publishes both
        second = LocalRunner(alice).run(demo_plan(size=1_200_000), {}, cache=False)
        bob = home_store(tmp_path, "bob")
        assert {r.id for r in bob.list_runs()} == {run.id, second.id}
        ns: dict = {}
        restore(bob, run.id, namespace=ns, names=["x"])
        assert np.array_equal(ns["x"], np.arange(1_200_000.0))
    finally:
        proxy.close()
        server.kill()
        server.wait()


def test_shared_gc_on_gcs_and_its_lease_against_publishing(tmp_path, gcs_store):
    from nbmagic.store.gc import Policy, collect
    from nbmagic.store.remote import StoreBusy

    alice = home_store(tmp_path, "alice")
    runs = [LocalRunner(alice).run(demo_plan(size=size)) for size in (100, 200, 300)]
    with alice.remote.lease("writer"):  # a run publishing right now: gc gives way
        with pytest.raises(StoreBusy, match=r"gc: 1 run\(s\) are publishing to gs://.*; nothing was removed"):
            collect(home_store(tmp_path, "bob"), Policy(keep_last=0), shared=True, grace=0)
    report = collect(home_store(tmp_path, "bob"), Policy(keep_last=1), shared=True, grace=0)
    assert {run_id for run_id, *_ in report.runs} == {runs[0].id, runs[1].id}
    assert f"shared store {gcs_store.uri}: removed 2 run records, 6 values" in report.text()
    assert len(gcs_store.keys("team/runs/index/")) == 1 and not gcs_store.keys("team/runs/locks/")
    carol = home_store(tmp_path, "carol")
    assert [r.id for r in carol.list_runs()] == [runs[2].id]
    ns: dict = {}
    restore(carol, "last", namespace=ns)
    assert ns["x"].shape == (300,)


def test_compiled_steps_and_katib_trials_get_the_gs_store_and_its_key_file_by_secret_name():
    import yaml

    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings
    from nbmagic.tune.katib import build_experiment
    from nbmagic.tune.space import ExperimentSpec, parse_param

    mount, key_file = "/var/run/secrets/nbmagic-store", "/var/run/secrets/nbmagic-store/key.json"
    text = compile_pipeline(demo_plan(), defaults=StepSettings(store="gs://team-bucket/runs", store_secret="team-gcs"))
    spec, platform = yaml.safe_load_all(text)
    executors = spec["deploymentSpec"]["executors"]
    steps = {name for name in executors if name in ("exec-make", "exec-use")}
    assert steps == {"exec-make", "exec-use"}, list(executors)
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in steps:
        container = executors[name]["container"]
        assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_file} in container["env"], container
        assert not [e for e in container["env"] if e["name"].startswith("AWS_")]
        program = " ".join(container["command"] + container["args"])
        assert "gs://team-bucket/runs" in program and "google-cloud-storage==" in program and "boto3" not in program
        assert key_file in program and "team-gcs" in program, "the step checks for the key file before its cell"
        (volume,) = kubernetes[name]["secretAsVolume"]
        assert (volume["secretName"], volume["mountPath"], volume["optional"]) == ("team-gcs", mount, False)
        (env,) = kubernetes[name]["secretAsEnv"]
        assert env["secretName"] == "team-gcs" and env["optional"] is True
        assert {e["envVar"]: e["secretKey"] for e in env["keyToEnv"]} == {
            "NBMAGIC_STORE_KEY": "NBMAGIC_STORE_KEY",
            "GOOGLE_CLOUD_PROJECT": "GOOGLE_CLOUD_PROJECT",
        }
    # workload identity: no secret, nothing mounted
    spec, *rest = yaml.safe_load_all(
        compile_pipeline(demo_plan(), defaults=StepSettings(store="gs://team-bucket/runs"))
    )
    for name in steps:
        container = spec["deploymentSpec"]["executors"][name]["container"]
        assert "gs://team-bucket/runs" in " ".join(container["command"] + container["args"])
        assert not container.get("env") and key_file not in " ".join(container["command"] + container["args"])
    assert not rest or not steps & set(rest[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="exp", max_trials=2)
    manifest = build_experiment(
        spec, name="exp", namespace="team", host="http://kfp", pipeline_name="p", store="gs://b-1/p", store_secret="sa"
    )
    pod = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--store gs://b-1/p" in " ".join(container["command"])
    # the key named, not optional: a secret without key.json stops the pod before the trial runs
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nbmagic-store"] == {
        "name": "nbmagic-store",
        "secret": {"secretName": "sa", "items": [{"key": "key.json", "path": "key.json"}]},
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["nbmagic-store"] == {"name": "nbmagic-store", "mountPath": mount, "readOnly": True}
    env = {e["name"]: e for e in container["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": key_file}
    for name in ("NBMAGIC_STORE_KEY", "GOOGLE_CLOUD_PROJECT"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "sa", "key": name, "optional": True}
    assert set(env) == {"GOOGLE_APPLICATION_CREDENTIALS", "NBMAGIC_STORE_KEY", "GOOGLE_CLOUD_PROJECT"}


@pytest.mark.slow
def test_the_compiled_yaml_on_kfp_local_records_its_run_in_the_gs_store(tmp_path, gcs_store, monkeypatch):
    from kfp import components, local

    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings

    plan = scaled_mean_plan("kfp-gcs")
    monkeypatch.delenv("NBMAGIC_STORE_URI")  # the URI is compiled in
    yaml_text = compile_pipeline(
        plan, output=tmp_path / "p.yaml", defaults=StepSettings(store=gcs_store.uri, store_secret="team-gcs")
    )
    assert gcs_store.uri in yaml_text and gcs_store.key not in yaml_text and gcs_store.endpoint not in yaml_text
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = components.load_component_from_file(str(tmp_path / "p.yaml"))(scale=2.0)
    assert task.outputs
    monkeypatch.setenv("NBMAGIC_STORE_URI", gcs_store.uri)
    reader = home_store(tmp_path, "reader")
    (run,) = reader.list_runs()
    assert (run.pipeline, run.status, run.kind, run.metrics) == ("kfp-gcs", "done", "kfp", {"mean": 5.0})
    ns: dict = {}
    restore(reader, run.id, namespace=ns)
    assert list(ns["X"]) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] and ns["mean"] == 5.0
    assert not gcs_store.keys("team/runs/locks/")


def test_the_cluster_images_executor_records_the_step_in_the_gs_store(tmp_path, gcs_store):
    from types import SimpleNamespace

    from nbmagic.runtime.executor import step_function

    target = {"uri": gcs_store.uri, "pipeline": "exec-gcs", "notebook": None, "steps": ["make"], "dag": {"make": []}}
    spec = {"step": "make", "label": "cell 1", "outputs": {"x": "out_x"}, "store": target, "store_run": "run_arg"}
    out = SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    step_function(spec, "import numpy as np\nx = np.ones(4)", "")(out_x=out, run_arg="kfp-run-9")
    assert not gcs_store.keys("team/runs/locks/"), "the step's writer lease is gone"
    (run,) = home_store(tmp_path, "reader").list_runs()
    assert (run.id, run.pipeline, run.status, run.kind) == ("kfp-run-9", "exec-gcs", "done", "kfp")
    ns: dict = {}
    restore(home_store(tmp_path, "reader"), "kfp-run-9", namespace=ns)
    assert list(ns["x"]) == [1.0, 1.0, 1.0, 1.0]


def test_google_cloud_storage_is_imported_only_for_a_gs_store(tmp_path):
    code = (
        "import sys\n"
        "from nbmagic.store.runs import RunStore\n"
        "from nbmagic.store.backends import open_backend\n"
        "from nbmagic.store_uri import parse\n"
        f"open_backend(parse('file://{tmp_path}/shared'))\n"
        "assert 'google.cloud.storage' not in sys.modules, 'imported before any gs store'\n"
        "open_backend(parse('gs://team-bucket/runs'))\n"
        "assert 'google.cloud.storage' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_store_clock_is_cloud_storages(gcs_store, monkeypatch):
    import time

    backend = open_backend(parse(gcs_store.uri))
    stamp = backend._probe_clock()
    assert stamp is not None and abs(stamp - time.time()) < 60, stamp  # the server runs on this machine
    assert not [k for k in gcs_store.keys() if "/tmp/" in k], "the probe is removed"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this machine's clock: an hour ahead
    backend._clock = None
    assert abs(backend.now() - real()) < 60
