"""One malformed (but signed) run record in the shared store is skipped with one line; the others stay usable."""

from __future__ import annotations

import json

from helpers.plans import step
from helpers.store_homes import shared_folder
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.restore import restore
from nbmagic.run.local import LocalRunner
from nbmagic.store.remote import _canonical, _sign
from nbmagic.store.runs import RunStore


def _plan() -> PipelinePlan:
    return PipelinePlan("ok", (step("make", "x = [1, 2, 3]", outputs=("x",)),), {}, ())


def _put_signed(shared, key: str, record: dict) -> None:
    body = {"record": record, "sig": _sign(b"k" * 32, _canonical(record))}
    (shared / "runs" / key).write_text(json.dumps(body))


def test_a_malformed_record_is_skipped_and_the_other_runs_list_and_restore(tmp_path, monkeypatch, capsys):
    shared = shared_folder(tmp_path, monkeypatch)
    alice = RunStore(tmp_path / "alice" / "store")
    good = LocalRunner(alice).run(_plan())
    template = alice.export_run(good.id)
    bad_started = json.loads(json.dumps(template))
    bad_started["run"].update(id="bad-started", started=None)
    _put_signed(shared, "0000000000001-bad-started.json", bad_started)
    bad_step = json.loads(json.dumps(template))
    bad_step["run"]["id"] = "bad-step"
    bad_step["executions"][0]["step"] = "../x"
    _put_signed(shared, "0000000000002-bad-step.json", bad_step)
    bob = RunStore(tmp_path / "bob" / "store")
    assert [r.id for r in bob.list_runs()] == [good.id]
    err = [line for line in capsys.readouterr().err.splitlines() if "malformed" in line]
    assert len(err) == 1 and "skipped 2 malformed run record(s)" in err[0], err
    ns: dict = {}
    restore(bob, good.id, namespace=ns)
    assert ns["x"] == [1, 2, 3]


def test_import_runs_skips_a_record_it_cannot_import_and_keeps_the_others(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NBMAGIC_STORE_URI", raising=False)
    alice = RunStore(tmp_path / "alice" / "store")
    good = alice.export_run(LocalRunner(alice).run(_plan()).id)
    bad = json.loads(json.dumps(good))
    bad["run"].update(id="bad-one", started=None)
    bob = RunStore(tmp_path / "bob" / "store")
    assert bob.import_runs([bad, good]) == 1
    assert [r.id for r in bob.list_runs()] == [good["run"]["id"]]
    assert "skipped 1 malformed run record(s), e.g. run 'bad-one'" in capsys.readouterr().err
