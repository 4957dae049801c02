"""When a shared cache hit is taken (moto on 127.0.0.1): only with the team key, only for steps whose stored
values are all they give, on the same platform, matching the run's record, said in one line; an unreachable
store or a gone run costs one attempt, and nothing is pulled before the entry is known to fit."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from helpers.plans import step
from helpers.store_homes import home_store
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.run.local import LocalRunner
from nbmagic.store import shared_cache


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch):
    for name in ("_said", "_down"):
        monkeypatch.setattr(shared_cache, name, {}, raising=False)
    for name in ("_gone", "_off_said"):
        monkeypatch.setattr(shared_cache, name, set(), raising=False)


def _plan(marker: Path) -> PipelinePlan:
    make = step(
        "make",
        f"open({str(marker)!r}, 'a').write('ran\\n')\nx = [1.0, 2.0, 3.0]\ntotal = sum(x)",
        outputs=("x", "total"),
        metrics=("total",),
    )
    return PipelinePlan("rules", (make,), {}, ("total",))


def _entries(s3_store) -> dict[str, dict]:
    client = s3_store.client()
    return {
        k: json.loads(client.get_object(Bucket=s3_store.bucket, Key=k)["Body"].read())
        for k in s3_store.keys()
        if "/cache/" in k
    }


def _rewrite(s3_store, key: str, body: dict) -> None:
    """Write an entry signed with the team key: what a writer holding the key (or a bug) could put there."""
    from nbmagic.store.remote import _canonical, _sign

    data = {"entry": body, "sig": _sign(s3_store.key.encode(), _canonical(body))}
    s3_store.client().put_object(Bucket=s3_store.bucket, Key=key, Body=json.dumps(data).encode())


def test_a_shared_hit_says_which_run_and_host_it_came_from(tmp_path, s3_store, capsys):
    marker = tmp_path / "marker.txt"
    first = LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    capsys.readouterr()
    again = LocalRunner(home_store(tmp_path, "bob")).run(_plan(marker))
    assert again.steps["make"].status == "cached" and marker.read_text() == "ran\n"
    err = capsys.readouterr().err
    line = f"step 'make' taken from the shared cache: computed in run {first.id} on {socket.gethostname()}"
    assert err.count(line) == 1, err


def test_without_a_team_key_shared_hits_are_off_said_once(tmp_path, s3_store, monkeypatch, capsys):
    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    assert _entries(s3_store)
    monkeypatch.delenv("NBMAGIC_STORE_KEY")
    for name in ("bob", "carol"):
        run = LocalRunner(home_store(tmp_path, name)).run(_plan(marker))
        assert run.steps["make"].status == "done"
    assert marker.read_text() == "ran\nran\nran\n"
    err = capsys.readouterr().err
    assert err.count("shared cache hits from") == 1 and "no team key ($NBMAGIC_STORE_KEY)" in err


@pytest.mark.parametrize("prep_outputs", [(), ("n",)], ids=["prep-stores-nothing", "prep-stores-a-value"])
def test_a_step_another_runs_after_or_that_stores_nothing_always_runs(tmp_path, s3_store, monkeypatch, prep_outputs):
    """The review's case: ``prep`` writes a file that ``train`` (run --after it) reads."""
    code = "open('data.txt', 'w').write('v2 computed by prep')" + ("\nn = 1" if prep_outputs else "")
    prep = step("prep", code, outputs=prep_outputs)
    train = step("train", "y = open('data.txt').read()", outputs=("y",), after=("prep",), index=2)
    plan = PipelinePlan("p", (prep, train), {}, ())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.txt").write_text("v1 left over in bob's folder")
    monkeypatch.chdir(tmp_path / "a")
    assert LocalRunner(home_store(tmp_path, "alice")).run(plan).status == "done"
    monkeypatch.chdir(tmp_path / "b")
    bob = home_store(tmp_path, "bob")
    run = LocalRunner(bob).run(plan)
    assert run.steps["prep"].status == "done"  # ran here: its effect (the file) is here
    assert (tmp_path / "b" / "data.txt").read_text() == "v2 computed by prep"
    assert bob.objects.get(run.steps["train"].outputs["y"]["hash"]) == "v2 computed by prep"


def test_an_entry_from_another_platform_is_a_miss(tmp_path, s3_store, capsys):
    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    ((key, data),) = _entries(s3_store).items()
    assert data["entry"]["platform"] == shared_cache.platform_tag()
    _rewrite(s3_store, key, {**data["entry"], "platform": {**data["entry"]["platform"], "machine": "riscv128"}})
    run = LocalRunner(home_store(tmp_path, "bob")).run(_plan(marker))
    assert run.steps["make"].status == "done" and marker.read_text() == "ran\nran\n"
    assert "riscv128" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["fewer-outputs", "other-metric", "not-kept"])
def test_a_signed_entry_that_disagrees_with_the_runs_record_is_a_miss(tmp_path, s3_store, capsys, change):
    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    ((key, data),) = _entries(s3_store).items()
    body = dict(data["entry"])
    if change == "fewer-outputs":
        body["outputs"] = {"x": body["outputs"]["x"]}  # a step planned to give only x would take it
    elif change == "other-metric":
        body["metrics"] = {"total": 99.0}
    else:
        body["not_kept"] = {"conn": "socket.socket"}
    _rewrite(s3_store, key, body)
    bob = home_store(tmp_path, "bob")
    if change == "fewer-outputs":  # asked for by a step that needs only x
        assert shared_cache.lookup(bob, body["key"], shared_cache.Wanted("make", frozenset({"x"}))) is None
    else:
        run = LocalRunner(bob).run(_plan(marker))
        assert run.steps["make"].status == "done", "not taken"
    assert "does not match the run's record" in capsys.readouterr().err


def test_an_unreachable_store_is_not_asked_again_for_a_while(tmp_path, s3_store, capsys):
    from nbmagic.store.backends import RemoteError

    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    bob = home_store(tmp_path, "bob")
    bob.sync(force=True)
    asked: list[str] = []

    def down(key: str) -> bytes:
        asked.append(key)
        raise RemoteError(f"the run store {s3_store.uri}: cannot read {key}: connection refused")

    bob.remote.backend.get_bytes = down
    wanted = shared_cache.Wanted("make", frozenset({"x"}))
    keys = ["a" * 64, "b" * 64, "c" * 64]
    assert [shared_cache.lookup(bob, k, wanted) for k in keys] == [None, None, None]
    assert len(asked) == 1  # the first lookup found the store down; the others did not pay for it
    assert capsys.readouterr().err.count("connection refused") == 1


def test_an_entry_whose_run_is_gone_syncs_once_per_process(tmp_path, s3_store):
    marker = tmp_path / "marker.txt"
    first = LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    client = s3_store.client()
    for k in s3_store.keys():
        if "/runs/" in k.split("team/runs", 1)[1] and first.id in k:
            client.delete_object(Bucket=s3_store.bucket, Key=k)  # the run's record, collected (say)
    ((key, data),) = _entries(s3_store).items()
    bob = home_store(tmp_path, "bob")
    forced = []
    sync = bob.sync
    bob.sync = lambda force=False: (forced.append(force), sync(force))[1]
    wanted = shared_cache.Wanted("make", frozenset({"x", "total"}), frozenset({"total"}))
    for _ in range(3):
        assert shared_cache.lookup(bob, data["entry"]["key"], wanted) is None
    assert forced.count(True) == 1


def test_nothing_is_pulled_for_an_entry_that_lacks_what_the_step_needs(tmp_path, s3_store):
    marker = tmp_path / "marker.txt"
    LocalRunner(home_store(tmp_path, "alice")).run(_plan(marker))
    ((key, data),) = _entries(s3_store).items()
    bob = home_store(tmp_path, "bob")
    pulled = []
    pull = bob.remote.pull_object
    bob.remote.pull_object = lambda objects, digest, name: (pulled.append(name), pull(objects, digest, name))[1]
    entry_key = data["entry"]["key"]
    for wanted in (
        shared_cache.Wanted("make", frozenset({"x", "model"})),  # an output the entry does not have
        shared_cache.Wanted("make", frozenset({"x"}), frozenset({"loss"})),  # a metric it does not have
        shared_cache.Wanted("make", frozenset({"x"}), carried={"history": "f" * 32}),  # other carried values
    ):
        assert shared_cache.lookup(bob, entry_key, wanted) is None
    assert pulled == []
    assert shared_cache.lookup(bob, entry_key, shared_cache.Wanted("make", frozenset({"x"}))) is not None
    assert sorted(pulled) == ["total", "x"]
