"""Review findings for run state: each test failed before its fix."""

from __future__ import annotations

import pytest
from test_runs_history import make_run

from nbmagic.store.history import HistoryError, query
from nbmagic.store.runs import RunStore


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "store")
    make_run(store, {"lr": 0.1}, {"val_loss": 0.5})
    make_run(store, {"lr": 0.01}, {"val_loss": 0.2})
    return store


def test_a_misspelt_where_or_sort_field_is_named_instead_of_matching_nothing(store):
    assert len(query(store, "val_loss<0.3")[0]) == 1
    with pytest.raises(
        HistoryError,
        match=r"--where 'val_los': no run has a metric or parameter 'val_los' \(metrics: val_loss; parameters: lr\)",
    ):
        query(store, "val_los<0.3")
    with pytest.raises(HistoryError, match="--sort 'metric.lr': no run has"):
        query(store, sort="-metric.lr")
    # a field some runs lack is fine, and so are the run's own columns
    make_run(store, {"lr": 0.2, "depth": 3}, {"val_loss": 0.9})
    assert len(query(store, "depth>2", sort="status,-duration")[0]) == 1
    assert query(RunStore(store.root / "empty"), "val_los<0.3")[1] == 0


def test_restore_best_after_katib_restart_ignores_the_forgotten_study(ip):
    from helpers.shell import run_cell

    cells = [
        "%%pipeline_parameters\nlr = 0.01",
        "%%step train\nval_loss = (lr - 0.03) ** 2\nmodel = 'old'",
        "%pipeline_metrics val_loss",
    ]
    for cell in cells:
        assert run_cell(ip, cell).success
    line = '%katib --max-trials 2 --param "lr=double(1e-3,1e-1)" --seed 1 --quiet --name mine'
    assert run_cell(ip, f"old = {line}").success
    ip.user_ns["old"].wait(120)
    assert run_cell(ip, "%%step train\nval_loss = (lr - 0.03) ** 2 + 1\nmodel = 'new'").success
    assert run_cell(ip, f"new = {line} --restart").success
    new = ip.user_ns["new"].wait(120)
    assert new.resumed == 0 and new.best is not None
    assert run_cell(ip, "%restore best --vars model").success
    assert ip.user_ns["model"] == "new"
