"""The store's cache as a compiled step takes it: the key's ingredients, and the component entry point on a
file:// store (hit, tampered entry, tampered value, no team key), and which steps the compiler lets hit."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.runtime import marshal, podcache
from nbmagic.runtime.component import nbmagic_run

BASE = {
    "code": "y = x * 2",
    "prelude": "import math",
    "parameters": {"scale": 2.0},
    "inputs": {"x": "a" * 32},
    "files": {"data.csv": "sha256:" + "b" * 64},
    "outputs": ["y"],
    "metrics": ["loss"],
    "env": {"MODE": "fast"},
    "environment": {
        "python": "3.11.7",
        "implementation": "cpython",
        "system": "linux",
        "machine": "x86_64",
        "packages": "c" * 64,
    },  # fmt: skip
}


@pytest.mark.parametrize(
    "change",
    [
        {"code": "y = x * 3"},
        {"prelude": "import os"},
        {"parameters": {"scale": 3.0}},
        {"parameters": {"scale": 2}},
        {"inputs": {"x": "d" * 32}},
        {"inputs": {"w": "a" * 32}},
        {"files": {"data.csv": "sha256:" + "e" * 64}},
        {"files": {}},
        {"outputs": ["y", "z"]},
        {"metrics": []},
        {"env": {"MODE": "slow"}},
        {"environment": {**BASE["environment"], "python": "3.12.1"}},
        {"environment": {**BASE["environment"], "machine": "aarch64"}},
        {"environment": {**BASE["environment"], "system": "darwin"}},
        {"environment": {**BASE["environment"], "packages": "f" * 64}},
    ],
)
def test_each_ingredient_changes_the_key(change):
    assert podcache.pod_key(**BASE) == podcache.pod_key(**BASE)
    assert podcache.pod_key(**{**BASE, **change}) != podcache.pod_key(**BASE)


def test_parameter_order_does_not_change_the_key():
    one = podcache.pod_key(**{**BASE, "parameters": {"a": 1, "b": 2}})
    assert one == podcache.pod_key(**{**BASE, "parameters": {"b": 2, "a": 1}})


def test_installed_packages_change_the_stamp(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    before = podcache.packages_stamp()
    (tmp_path / "numpy-2.0.0.dist-info").mkdir()
    monkeypatch.setattr("sys.path", [str(tmp_path), str(tmp_path / ".")])  # a new path: looked at again
    assert podcache.packages_stamp() != before


# ----------------------------------------------------------------------------- the entry point, for real


def _artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata={})


class _Metrics:
    def __init__(self) -> None:
        self.logged: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


@pytest.fixture
def pod(tmp_path, monkeypatch):
    """Run one step through ``nbmagic_run`` as a pod would, on a file:// store with a team key."""
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "team-key-for-tests-0123456789")
    marker = tmp_path / "ran.txt"
    source = tmp_path / "input-x"
    source.mkdir()
    marshal.save([1, 2, 3], source, "x")
    store_root = tmp_path / "store"
    counter = {"n": 0}

    def run(cache: bool = True) -> SimpleNamespace:
        counter["n"] += 1
        out = tmp_path / f"run{counter['n']}"
        outputs = {"y": _artifact(out / "y")}
        metrics = _Metrics()
        nbmagic_run(
            step="double",
            label="demo.ipynb cell 2",
            code=f"open({str(marker)!r}, 'a').write('x')\ny = [v * 2 for v in x]\nloss = float(sum(y))",
            prelude="",
            parameters={"scale": 2.0},
            inputs={"x": _artifact(source)},
            outputs=outputs,
            metric_names=("loss",),
            metrics=metrics,
            store={
                "uri": f"file://{store_root}",
                "run": f"run-{counter['n']}",
                "pipeline": "demo",
                "steps": ["double"],
                "dag": {"double": []},
                "cache": cache,
            },
        )
        return SimpleNamespace(
            y=marshal.load(out / "y", "y"),
            meta=outputs["y"].metadata,
            metrics=metrics.logged,
            ran=len(marker.read_text()) if marker.exists() else 0,
        )

    return SimpleNamespace(run=run, root=store_root)


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "store's cache" in line]


def test_a_hit_runs_no_code_and_gives_the_same_outputs_and_metrics(pod, capsys):
    first = pod.run()
    assert first.ran == 1 and _lines(capsys.readouterr().err) == []
    (entry,) = (pod.root / "podcache").rglob("*.json")
    second = pod.run()
    captured = capsys.readouterr()
    assert second.ran == 1 and second.y == [2, 4, 6] and second.metrics == {"loss": 12.0}
    assert second.meta == first.meta and second.meta["hash"]
    host = json.loads(entry.read_text())["entry"]["host"]
    assert _lines(captured.err) == [f"nbmagic: step 'double': taken from the store's cache (run run-1 on {host})"]
    assert 'nbmagic-metric {"step": "double", "name": "loss", "value": 12.0}' in captured.out
    (record,) = [json.loads(p.read_text())["record"] for p in (pod.root / "runs").glob("*-run-2-double.json")]
    (ex,) = record["executions"]
    assert (ex["state"], ex["cached"], ex["properties"]["reused_from"]) == (
        "cached",
        1,
        {"run": "run-1", "step": "double"},
    )
    assert set(ex["outputs"]) == {"y", "loss"} and record["run"]["metrics"] == {"loss": 12.0}


def test_a_tampered_entry_is_one_line_the_step_runs_and_the_entry_is_written_again(pod, capsys):
    pod.run()
    (path,) = (pod.root / "podcache").rglob("*.json")
    wrapper = json.loads(path.read_text())
    wrapper["entry"]["run"] = "someone-else"
    path.write_text(json.dumps(wrapper))
    capsys.readouterr()
    again = pod.run()
    lines = _lines(capsys.readouterr().err)
    assert again.ran == 2 and again.y == [2, 4, 6] and len(lines) == 1
    assert "not taken from the store's cache: its entry" in lines[0] and "not signed with the team key" in lines[0]
    assert json.loads(path.read_text())["entry"]["run"] == "run-2"  # replaced by a good one
    assert pod.run().ran == 2


def test_a_tampered_value_is_one_line_the_step_runs_and_uploads_it_again(pod, capsys):
    first = pod.run()
    digest = first.meta["hash"]
    folder = pod.root / "objects" / digest[:2] / digest
    data = next(p for p in folder.iterdir() if p.name not in ("manifest.json", "manifest.sig"))
    data.write_bytes(b"\0" * data.stat().st_size)
    capsys.readouterr()
    again = pod.run()
    lines = _lines(capsys.readouterr().err)
    assert again.ran == 2 and again.y == [2, 4, 6] and len(lines) == 1
    assert "is corrupt" in lines[0] and lines[0].endswith("the step runs")
    assert pod.run().ran == 2  # uploaded whole again: the next run takes it


def test_no_team_key_no_hit_and_no_entry(pod, capsys, monkeypatch):
    monkeypatch.delenv("NBMAGIC_STORE_KEY")
    pod.run()
    again = pod.run()
    assert again.ran == 2 and not (pod.root / "podcache").exists()
    lines = _lines(capsys.readouterr().err)
    assert (
        lines == ["nbmagic: step 'double': the store's cache is off: no team key ($NBMAGIC_STORE_KEY) is set here"] * 2
    )


def test_a_step_compiled_without_cache_never_hits(pod, capsys):
    pod.run()
    assert pod.run(cache=False).ran == 2 and _lines(capsys.readouterr().err) == []


# ----------------------------------------------------------------------------- what the compiler allows


def _targets(*steps, **settings) -> dict:
    from nbmagic.compile.generate import _plan_components, _store_target
    from nbmagic.pipeline.settings import StepSettings

    plan = PipelinePlan("p", steps, {}, ())
    comps = _plan_components(plan, "python:3.11", (), StepSettings(store="s3://b/p", **settings), frozenset())
    return {c.step.name: _store_target(c, plan) for c in comps}


def test_the_compiler_lets_hit_only_steps_whose_key_covers_what_they_do():
    from nbmagic.pipeline.settings import SecretEnv, SecretFile

    make = step("make", "x = 1", outputs=("x",))
    use = step("use", "y = x", inputs={"x": "make"}, outputs=("y",), index=2)
    side = step("side", "s = 1", outputs=("s",), index=3)
    late = step("late", "z = 2", outputs=("z",), after=("side",), index=4)
    quiet = step("quiet", "print(1)", index=5)
    found = _targets(make, use, side, late, quiet)
    assert {name: t["cache"] for name, t in found.items()} == {
        "make": True,
        "use": True,
        "side": False,  # another step runs --after it
        "late": False,  # it runs --after one
        "quiet": False,  # nothing to produce
    }
    assert _targets(make, cache=False)["make"]["cache"] is False
    assert _targets(make, secret_env=(SecretEnv("s", "k", "TOKEN"),))["make"]["cache"] is False
    assert _targets(make, secret_files=(SecretFile("s", "/etc/s"),))["make"]["cache"] is False
    assert _targets(make, env=(("MODE", "fast"),))["make"]["env"] == ["MODE"]


def test_shared_gc_removes_the_entries_of_the_runs_it_drops_and_keeps_what_a_cached_run_names(
    pod, capsys, tmp_path, monkeypatch
):
    from helpers.store_homes import home_store
    from nbmagic.store.gc import Policy, collect

    pod.run()
    second = pod.run()  # cached: its record names run-1's values
    assert second.ran == 1 and len(list((pod.root / "podcache").rglob("*.json"))) == 1
    beat = pod.root / "live" / "run-1.json"
    os.utime(beat, (beat.stat().st_mtime - 3600,) * 2)  # run-1 ended an hour ago: no fresh heartbeat keeps it
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{pod.root}")
    report = collect(home_store(tmp_path, "bob"), Policy(keep_last=1), shared=True, grace=0)
    assert [run_id for run_id, *_ in report.runs] == ["run-1"]
    assert not list((pod.root / "podcache").rglob("*.json"))  # its entry went with it
    digest = second.meta["hash"]
    assert (pod.root / "objects" / digest[:2] / digest / "manifest.json").is_file()  # run-2 still names it
    capsys.readouterr()
    third = pod.run()
    assert third.ran == 2 and _lines(capsys.readouterr().err) == []  # a plain miss, then a new entry
    assert pod.run().ran == 2
