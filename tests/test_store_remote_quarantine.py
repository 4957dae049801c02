"""A run record gc cannot read or verify does not stop it: the record is set aside under quarantine/ with one
line, every value it names stays (in this gc and the next), and `%runs` shows nothing from it."""

from __future__ import annotations

import json

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.gc import Policy, collect
from nbmagic.store.runs import RunStore


def _plan(size: int, name: str) -> PipelinePlan:
    make = step("make", f"import numpy as np\nx = np.arange({size}, dtype='float64')", outputs=("x",))
    return PipelinePlan(name, (make,), {}, ())


def _home(tmp_path, name: str) -> RunStore:
    return RunStore(tmp_path / name / "store")


def _manifests(s3_store) -> set[str]:
    return {k.split("/")[-2] for k in s3_store.keys("team/runs/objects/") if k.endswith("/manifest.json")}


def test_gc_sets_a_bad_record_aside_keeps_what_it_names_and_goes_on(tmp_path, s3_store):
    alice = _home(tmp_path, "alice")
    old = LocalRunner(alice).run(_plan(100, "p"))
    forged = LocalRunner(alice).run(_plan(300, "q"))  # its record is then changed by someone without the key
    new = LocalRunner(alice).run(_plan(200, "p"))
    hashes = {
        r["run"]["id"]: {x["hash"] for ex in r["executions"] for x in ex["outputs"].values()}
        for r in (alice.export_run(i) for i in (old.id, forged.id, new.id))
    }
    client = s3_store.client()
    key = next(k for k in s3_store.keys("team/runs/runs/") if forged.id in k)
    body = json.loads(client.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read())
    body["sig"] = "0" * 64
    client.put_object(Bucket=s3_store.bucket, Key=key, Body=json.dumps(body).encode())
    report = collect(_home(tmp_path, "bob"), Policy(keep_last=1), shared=True, grace=0)
    lines = [line for line in report.text().splitlines() if "quarantine/" in line]
    assert len(lines) == 1 and "set aside 1 unreadable or unverifiable run record(s)" in lines[0], report.text()
    assert forged.id in lines[0] and "keeping every value they name" in lines[0]
    assert old.id in {run_id for run_id, *_ in report.runs}  # gc went on: the old run is gone ...
    left = _manifests(s3_store)
    assert not hashes[old.id] & left and hashes[new.id] <= left  # ... with its values; the kept run keeps its own
    assert hashes[forged.id] <= left  # the bad record's values stay
    assert [k.removeprefix("team/runs/") for k in s3_store.keys("team/runs/quarantine/")] == [
        f"quarantine/{key.removeprefix('team/runs/')}"
    ]
    assert not [k for k in s3_store.keys("team/runs/runs/") if forged.id in k]
    carol = _home(tmp_path, "carol")
    assert [r.id for r in carol.list_runs()] == [new.id]  # nothing from the bad record
    collect(_home(tmp_path, "dave"), Policy(keep_last=1), shared=True, grace=0)
    assert hashes[forged.id] <= _manifests(s3_store)  # still kept while it is in quarantine/
    ns: dict = {}
    restore(carol, new.id, namespace=ns)
    assert ns["x"].shape == (200,)
