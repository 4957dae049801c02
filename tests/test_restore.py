"""%restore in an IPython shell: state after a step, ancestors only, --vars, last/prefix/best, reports, errors."""

from __future__ import annotations

import os

import pytest
from IPython.core.error import UsageError

from helpers.compile_runs import run_twice
from helpers.shell import run_ok
from nbmagic.errors import NbMagicError
from nbmagic.restore import Provenance, resolve_run, restore, state_after
from nbmagic.store.runs import RunStore

CELLS = [
    "import numpy as np\nfrom sklearn.linear_model import LogisticRegression\nfrom sklearn.datasets import load_iris\n",
    "%%pipeline_parameters\nC = 1.0\n",
    "%%step load\nX, y = load_iris(return_X_y=True)\nraw_rows = len(X)\n",
    "%%step side --after load\nside_value = 'side'\nhandle = open(__file__ if '__file__' in dir() else '/dev/null')\n",
    "%%step train\nmodel = LogisticRegression(C=C, max_iter=500).fit(X, y)\nacc = float(model.score(X, y))\nn_classes = np.int64(3)\n",
    "%pipeline_metrics acc\n",
]


@pytest.fixture
def ran(ip):
    first, second = run_twice(ip, CELLS, "C=0.01")
    assert first.status == "done" and second.status == "done", (first.error, second.error)
    return ip, first, second


def _clear(shell, *names):
    for name in names:
        shell.user_ns.pop(name, None)


def test_restore_last_brings_back_the_model_and_predicts(ran, capsys):
    ip, first, second = ran
    _clear(ip, "model", "X", "y", "acc", "C", "n_classes", "raw_rows")
    ip.user_ns["X"] = "something else"
    capsys.readouterr()
    run_ok(ip, "%restore last")
    out = capsys.readouterr().out
    ns = ip.user_ns
    assert ns["C"] == 0.01 and type(ns["C"]) is float  # the run's parameters, typed
    assert list(ns["model"].predict(ns["X"][:3])) == list(second.value("model").predict(ns["X"][:3]))
    assert ns["model"].C == 0.01
    assert type(ns["n_classes"]).__name__ == "int64" and ns["n_classes"] == 3  # numpy scalar stays a scalar
    assert type(ns["raw_rows"]) is int
    assert "sklearn.linear_model" in out and "train" in out and "load" in out
    assert "replaced a value of type str" in out  # X replaced a str
    assert "handle" in out and "not kept" in out  # unserializable values are listed, not silently missing


def test_restore_step_loads_only_that_step_and_ancestors(ran):
    ip, first, second = ran
    _clear(ip, "model", "X", "y", "side_value", "acc")
    run_ok(ip, f"%restore {first.id} load")
    assert "X" in ip.user_ns and "model" not in ip.user_ns and "side_value" not in ip.user_ns
    run_ok(ip, f"%restore {first.id} side")
    assert ip.user_ns["side_value"] == "side" and "model" not in ip.user_ns
    state = state_after(RunStore(), first.id, "train")
    assert set(state.items) == {
        "C",
        "X",
        "y",
        "raw_rows",
        "model",
        "acc",
        "n_classes",
    }  # side is not an ancestor of train
    assert state.items["X"].step == "load"


def test_restore_vars_prefix_and_errors(ran):
    ip, first, second = ran
    _clear(ip, "model", "X", "acc")
    # the shortest prefix of the first run's id that no other run shares (ids of one second differ in hex only)
    others = [r.id for r in RunStore().list_runs() if r.id != first.id]
    prefix = next(
        first.id[:n] for n in range(17, len(first.id) + 1) if not any(o.startswith(first.id[:n]) for o in others)
    )
    assert len(prefix) < len(first.id)
    run_ok(ip, f"%restore {prefix} --vars model,acc")
    assert ip.user_ns["model"].C == 1.0 and "X" not in ip.user_ns
    with pytest.raises(UsageError, match="no value 'nope'"):
        run_ok(ip, "%restore last --vars nope")
    with pytest.raises(UsageError, match="has no step 'nostep'"):
        run_ok(ip, "%restore last nostep")
    with pytest.raises(UsageError, match="no run 'zzz'"):
        run_ok(ip, "%restore zzz")
    with pytest.raises(UsageError, match="ambiguous"):
        run_ok(ip, "%restore 2")


def test_restore_best_uses_the_experiment_objective(ran):
    ip, first, second = ran
    store = RunStore()
    with pytest.raises(NbMagicError, match="no tuning experiment"):
        resolve_run(store, "best")
    for run, _acc in ((first, 0.9), (second, 0.5)):
        store._connection().execute("UPDATE runs SET experiment='exp1' WHERE id=?", (run.id,))
    with pytest.raises(NbMagicError, match="no recorded objective"):
        resolve_run(store, "best")
    store.set_experiment("exp1", "acc", "maximize")
    best_id = first.id if first.metrics["acc"] > second.metrics["acc"] else second.id
    assert resolve_run(store, "best") == best_id
    store.set_experiment("exp1", "acc", "minimize")
    assert resolve_run(store, "best:exp1") != best_id
    _clear(ip, "model")
    run_ok(ip, "%restore best --vars model")
    assert ip.user_ns["model"] is not None


def test_restore_refuses_cluster_runs_and_tampered_values(ran):
    ip, first, second = ran
    store = RunStore()
    cluster = store.create_run("pipeline", {}, ["train"], kind="cluster", run_id="kfp-run-123")
    with pytest.raises(NbMagicError, match="only gives MLMD artifact ids"):
        restore(store, cluster)
    digest = first.outputs("train")["model"]["hash"]
    folder = store.objects._path(digest)
    data = next(p for p in folder.iterdir() if p.name != "manifest.json")
    os.chmod(data, 0o644)
    with open(data, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\x00garbage\x00")
    namespace = {"model": "mine"}
    with pytest.raises(NbMagicError, match="model"):
        restore(store, first.id, "train", namespace=namespace)
    assert namespace == {"model": "mine"}  # nothing assigned when a value fails to load


def test_provenance_tracks_rebinding(ran):
    ip, first, second = ran
    store = RunStore()
    prov = Provenance()
    ns: dict = {}
    report = restore(store, "last", names=["model", "raw_rows"], namespace=ns, provenance=prov)
    assert {item.name for item in report.loaded} == {"model", "raw_rows"}
    assert prov.origin("model", ns["model"]).run_id == second.id
    assert prov.origin("raw_rows", ns["raw_rows"]).step == "load"
    assert prov.origin("model", object()) is None  # rebound: forgotten
    assert "<table>" in report._repr_html_() and "raw_rows" in report._repr_html_()
