"""The shared run store on S3 (moto's real S3 server on 127.0.0.1) and on a shared folder (file://).

Two stores with different ``$NBMAGIC_HOME`` share runs and values through it; faults are done for real: a
connection cut mid-upload (a TCP proxy), a byte flipped in a stored value, a record or value not signed with
the team key, many writer processes at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers.flaky_proxy import FlakyProxy
from helpers.store_homes import demo_plan, home_store, shared_folder, start_writers
from nbmagic.errors import NbMagicError
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.objects import UntrustedValue
from nbmagic.store_uri import StoreURIError, parse

ROOT = Path(__file__).resolve().parent.parent


def test_store_uris_are_checked_in_one_place():
    assert str(parse("s3://team-bucket/ml/runs/")) == "s3://team-bucket/ml/runs"
    assert parse("s3://team-bucket").prefix == ""
    assert str(parse("file:///mnt/shared/runs")) == "file:///mnt/shared/runs"
    for bad, words in (
        ("team-bucket/runs", "not a store URI"),
        ("s3://Bad_Bucket/x", "not an S3 bucket name"),
        ("s3://bucket/a/../b", "prefix part '..'"),
        ("s3://key:secret@bucket/x", "credentials and options do not go in the URI"),
        ("file://relative/path", "absolute path"),
        ("gs://goog-bucket/x", "not a Cloud Storage bucket name"),
        ("ftp://host/x", "unknown scheme 'ftp'"),
    ):
        with pytest.raises(StoreURIError, match=words.replace("(", r"\(").replace(".", r"\.")):
            parse(bad)


def test_pipeline_config_store_sets_the_kernels_store_and_rejects_bad_uris(ip, monkeypatch):
    from helpers.shell import run_cell

    monkeypatch.setenv("NBMAGIC_STORE_URI", "")  # the magic sets it: the test's end restores it as it was
    monkeypatch.delenv("NBMAGIC_STORE_URI")
    result = run_cell(ip, "%pipeline_config --store s3://no_such/x")
    assert "not an S3 bucket name" in str(result.error_in_exec)
    assert "NBMAGIC_STORE_URI" not in os.environ
    run_cell(ip, "%pipeline_config --store s3://team-bucket/runs --store-secret team-s3")
    assert os.environ["NBMAGIC_STORE_URI"] == "s3://team-bucket/runs"


def test_two_homes_share_runs_and_values_through_a_shared_folder(tmp_path, monkeypatch):
    shared_folder(tmp_path, monkeypatch)
    first = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan())
    assert first.status == "done", first.error
    bob = home_store(tmp_path, "bob")
    assert [(r.id, r.status, r.metrics) for r in bob.list_runs()] == [(first.id, "done", {"total": 45.0})]
    ns: dict = {}
    restore(bob, "last", namespace=ns)
    assert np.array_equal(ns["x"], np.arange(10.0)) and ns["table"] == {"n": 10, "first": 0.0}
    shared = tmp_path / "shared"
    assert all(p.stat().st_mode & 0o077 == 0 for p in shared.rglob("*")), "a shared folder is owner-only by default"
    # a value pulled once is then local: the shared copy may go
    for manifest in (shared / "objects").rglob("manifest.json"):
        manifest.unlink()
    ns.clear()
    restore(bob, first.id, namespace=ns)
    assert ns["total"] == 45.0


def test_runs_and_restore_through_s3(tmp_path, s3_store):
    run = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan())
    assert run.status == "done", run.error
    keys = s3_store.keys()
    assert [k for k in keys if k.startswith("team/runs/runs/") and k.endswith(f"-{run.id}.json")], keys
    assert not s3_store.keys("team/runs/locks/"), "the writer's lease is gone once the run is published"
    bob = home_store(tmp_path, "bob")
    ns: dict = {}
    report = restore(bob, run.id[:12], namespace=ns)
    assert {item.name for item in report.loaded} == {"x", "table", "total"}
    assert np.array_equal(ns["x"], np.arange(10.0)) and ns["table"]["n"] == 10
    # the second restore reads the local cache only: the shared copy can be gone
    assert bob.objects.exists(bob.step_values(run.id, "make")["x"]["hash"])


def test_a_corrupt_shared_value_is_detected_on_read_and_removed(tmp_path, s3_store):
    run = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan(size=1000))
    client = s3_store.client()
    data_key = next(k for k in s3_store.keys() if k.endswith(".npy"))
    body = bytearray(client.get_object(Bucket=s3_store.bucket, Key=data_key)["Body"].read())
    body[-1] ^= 0xFF
    client.put_object(Bucket=s3_store.bucket, Key=data_key, Body=bytes(body))
    bob = home_store(tmp_path, "bob")
    with pytest.raises(NbMagicError) as caught:
        restore(bob, run.id, namespace={}, names=["x"])
    message = str(caught.value)
    assert "'x' is corrupt" in message and "removed from the shared store" in message and "\n" not in message
    assert not [k for k in s3_store.keys() if k.startswith(data_key.rsplit("/", 1)[0])], "the corrupt value is gone"


def test_values_that_can_run_code_need_the_team_key(tmp_path, s3_store, monkeypatch, capsys):
    run = LocalRunner(home_store(tmp_path, "alice")).run(demo_plan())
    monkeypatch.delenv("NBMAGIC_STORE_KEY")
    bob = home_store(tmp_path, "bob")
    ns: dict = {}
    restore(bob, run.id, namespace=ns, names=["x"])  # npy: loading runs no code, the hash guards it
    assert ns["x"][3] == 3.0
    with pytest.raises(NbMagicError, match="not signed with the team key .no .NBMAGIC_STORE_KEY is set here"):
        restore(bob, run.id, namespace=ns, names=["table"])  # a pickle
    # a kernel holding another key skips the records (one line) instead of trusting them
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "another-team-key-0123456789")
    carol = home_store(tmp_path, "carol")
    assert carol.list_runs() == []
    err = capsys.readouterr().err
    assert "skipped 1 run record(s)" in err and "not signed with the team key" in err
    with pytest.raises(UntrustedValue):
        bob.objects.remote.key = b"another-team-key-0123456789"
        bob.objects.remote.pull_object(bob.objects, bob.step_values(run.id, "use")["table"]["hash"], "table")


def test_a_connection_cut_mid_upload_is_one_line_and_leaves_nothing_half_written(
    tmp_path, s3_store, monkeypatch, capsys
):
    proxy = FlakyProxy(int(s3_store.endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "2")
    proxy.cut_after = 256 << 10
    alice = home_store(tmp_path, "alice")
    run = LocalRunner(alice).run(demo_plan(size=400_000))  # a 3.2 MB array
    assert run.status == "done", run.error
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nbmagic:")]
    assert len(err) == 1, err
    assert f"run {run.id} is recorded here but not in {s3_store.uri}" in err[0]
    assert "network error" in err[0] and "published with the next run" in err[0]
    assert proxy.cuts >= 2
    keys = s3_store.keys()
    assert not [k for k in keys if k.endswith(".npy") or k.startswith(("team/runs/runs/", "team/runs/locks/"))], keys
    folders = {k.rsplit("/", 1)[0] for k in keys}
    assert all(f"{folder}/manifest.json" in keys for folder in folders), "a value is whole or absent"
    assert home_store(tmp_path, "bob").list_runs() == []  # nothing half-published is visible
    proxy.cut_after = None  # the network is back: the next run publishes both
    second = LocalRunner(alice).run(demo_plan(size=400_000), {}, cache=False)
    bob = home_store(tmp_path, "bob")
    assert {r.id for r in bob.list_runs()} == {run.id, second.id}
    ns: dict = {}
    restore(bob, run.id, namespace=ns, names=["x"])
    assert ns["x"].shape == (400_000,)
    proxy.close()


WRITER = """
import os, sys
sys.path[:0] = [{root!r}, {tests!r}]
from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
n = int(sys.argv[1])
plan = PipelinePlan("writers", (step("make", "import numpy as np\\nx = np.full(1000, N)\\nscore = float(N)",
                    params=("N",), outputs=("x", "score"), metrics=("score",)),), {{}}, ("score",))
from nbmagic.pipeline.model import Parameter
plan = PipelinePlan(plan.name, plan.steps, {{"N": Parameter("N", 0, "int")}}, plan.metrics)
run = LocalRunner(workers=1).run(plan, {{"N": n}})
print(run.id, run.status, flush=True)
"""


@pytest.mark.slow
def test_many_writer_processes_at_once(tmp_path, s3_store):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    procs = start_writers(script, 6, s3_store.env(), tmp_path)
    ids = {}
    for n, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        run_id, status = out.split()[-2:]
        assert status == "done"
        ids[run_id] = n
    reader = home_store(tmp_path, "reader")
    runs = reader.list_runs()
    assert {r.id for r in runs} == set(ids)
    for run in runs:
        ns: dict = {}
        restore(reader, run.id, namespace=ns)
        assert ns["score"] == float(ids[run.id]) and (ns["x"] == ids[run.id]).all()
    assert not s3_store.keys("team/runs/locks/")
    records = s3_store.keys("team/runs/runs/")
    assert len(records) == 6
    body = json.loads(s3_store.client().get_object(Bucket=s3_store.bucket, Key=records[0])["Body"].read())
    assert body["sig"] and body["record"]["run"]["pipeline"] == "writers"
    assert "testing-secret-access-key" not in json.dumps(body) and s3_store.key not in json.dumps(body)


def test_shared_gc_drops_old_runs_and_their_values_and_keeps_what_kept_runs_use(tmp_path, s3_store):
    from nbmagic.store.gc import Policy, collect

    alice = home_store(tmp_path, "alice")
    runs = [LocalRunner(alice).run(demo_plan(size=size)) for size in (100, 200, 300)]
    bob = home_store(tmp_path, "bob")
    report = collect(bob, Policy(keep_last=1), shared=True, grace=0)
    assert {run_id for run_id, *_ in report.runs} == {runs[0].id, runs[1].id}
    assert f"shared store {s3_store.uri}: removed 2 run records, 6 values" in report.text()  # 2 x (x, total, table)
    assert len(s3_store.keys("team/runs/index/")) == 1  # gc leaves a compacted index of the remaining runs
    carol = home_store(tmp_path, "carol")
    fetched: list[str] = []
    backend = carol.remote.backend
    get_bytes = backend.get_bytes
    backend.get_bytes = lambda key: fetched.append(key) or get_bytes(key)
    try:
        assert [r.id for r in carol.list_runs()] == [runs[2].id]
    finally:
        del backend.get_bytes
    assert [k.split("/")[0] for k in fetched] == ["index"], fetched  # a first sync of one GET
    ns: dict = {}
    restore(carol, "last", namespace=ns)
    assert ns["x"].shape == (300,) and ns["table"]["n"] == 300
    assert not s3_store.keys("team/runs/locks/")


def test_shared_gc_and_publishing_exclude_each_other(tmp_path, s3_store):
    import threading
    import time

    from nbmagic.store.gc import Policy, collect
    from nbmagic.store.remote import StoreBusy

    alice = home_store(tmp_path, "alice")
    LocalRunner(alice).run(demo_plan())
    with alice.remote.lease("writer"):  # a run publishing right now
        with pytest.raises(StoreBusy, match=r"gc: 1 run\(s\) are publishing to .*; nothing was removed"):
            collect(home_store(tmp_path, "bob"), Policy(keep_last=0), shared=True, grace=0)
    before = len(s3_store.keys("team/runs/runs/"))
    bob = home_store(tmp_path, "bob")
    finished = threading.Event()
    with bob.remote.lease("gc"):  # a gc deleting right now: a run that ends meanwhile waits to publish
        thread = threading.Thread(target=lambda: (LocalRunner(alice).run(demo_plan(), cache=False), finished.set()))
        thread.start()
        time.sleep(4)
        assert len(s3_store.keys("team/runs/runs/")) == before and not finished.is_set()
    thread.join(60)
    assert finished.is_set() and len(s3_store.keys("team/runs/runs/")) == before + 1


def test_katib_trials_get_the_store_and_its_secret_by_name_only():
    from nbmagic.tune.katib import build_experiment
    from nbmagic.tune.space import ExperimentSpec, parse_param

    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", name="exp", max_trials=2)
    manifest = build_experiment(
        spec,
        name="exp",
        namespace="team",
        host="http://kfp",
        pipeline_name="p",
        store="s3://b/p",
        store_secret="team-s3",
    )
    container = manifest["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["command"])
    assert "--store s3://b/p --katib-experiment exp --goal minimize" in command
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "team-s3", "key": "AWS_SECRET_ACCESS_KEY", "optional": False}
    assert refs["NBMAGIC_STORE_KEY"]["optional"] is True and all("value" not in e for e in container["env"])


def test_an_unreachable_store_is_one_line_and_the_local_runs_are_shown(tmp_path, s3_store, monkeypatch, capsys):
    import socket

    alice = home_store(tmp_path, "alice")
    run = LocalRunner(alice).run(demo_plan())
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "1")
    capsys.readouterr()
    assert [r.id for r in home_store(tmp_path, "alice").list_runs()] == [run.id]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nbmagic:")]
    assert len(err) == 1 and f"the run store {s3_store.uri}: cannot list runs/" in err[0], err
    assert "network error" in err[0] and "(showing the runs known here)" in err[0]


@pytest.mark.slow
def test_gc_looping_while_writer_processes_publish_never_leaves_a_run_without_its_values(tmp_path, s3_store):
    import threading

    from nbmagic.store.backends import RemoteError
    from nbmagic.store.gc import Policy, collect

    script = tmp_path / "writer.py"
    one = 'run = LocalRunner(workers=1).run(plan, {"N": n})\nprint(run.id, run.status, flush=True)'
    three = "for n in range(n, n + 30, 10):\n    " + one.replace("\n", "\n    ")  # 3 runs per process
    script.write_text(WRITER.format(root=str(ROOT), tests=str(ROOT / "tests")).replace(one, three))
    procs = start_writers(script, 4, s3_store.env(), tmp_path)
    stop, sweeps, busy = threading.Event(), [], []

    def gc_loop() -> None:
        while not stop.is_set():
            try:
                sweeps.append(collect(home_store(tmp_path, "gc"), Policy(keep_last=0), shared=True, grace=0))
            except RemoteError:
                busy.append(1)  # gave way to a publishing run

    thread = threading.Thread(target=gc_loop)
    thread.start()
    try:
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        stop.set()
        thread.join(120)
    assert all(proc.returncode == 0 for proc in procs) and sum(o.count(" done") for o in outputs) == 12
    assert sweeps and sum(len(report.runs) for report in sweeps) > 0, "gc ran and dropped runs meanwhile"
    reader = home_store(tmp_path, "reader")
    listed = reader.list_runs()
    assert listed, "the newest run is always kept"
    for run in listed:  # every run still recorded has every value
        ns: dict = {}
        restore(reader, run.id, namespace=ns)
        assert (ns["x"] == ns["score"]).all()


def test_steps_in_the_cluster_image_carry_the_store_in_their_spec_and_its_secret_by_name():
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings

    text = compile_pipeline(
        demo_plan(),
        image="registry.example/nbmagic:1",
        runtime_image="registry.example/nbmagic:1",
        defaults=StepSettings(store="s3://team-bucket/runs", store_secret="team-s3"),
    )
    assert "nbmagic.runtime.executor" in text and '"store":{"uri":"s3://team-bucket/runs","pipeline":"demo"' in text
    assert '"store_run":"nbmagic_store_run"' in text and "{{$.pipeline_job_uuid}}" in text
    assert "secretName: team-s3" in text and "envVar: AWS_SECRET_ACCESS_KEY" in text


def test_the_cluster_images_executor_records_the_step_in_the_store(tmp_path, s3_store):
    from types import SimpleNamespace

    from nbmagic.runtime.executor import step_function

    target = {"uri": s3_store.uri, "pipeline": "exec-demo", "notebook": None, "steps": ["make"], "dag": {"make": []}}
    spec = {"step": "make", "label": "cell 1", "outputs": {"x": "out_x"}, "store": target, "store_run": "run_arg"}
    out = SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    step_function(spec, "import numpy as np\nx = np.ones(4)", "")(out_x=out, run_arg="kfp-run-7")
    reader = home_store(tmp_path, "reader")
    (run,) = reader.list_runs()
    assert (run.id, run.pipeline, run.status, run.kind) == ("kfp-run-7", "exec-demo", "done", "kfp")
    ns: dict = {}
    restore(reader, "kfp-run-7", namespace=ns)
    assert list(ns["x"]) == [1.0, 1.0, 1.0, 1.0]
