"""Review findings for run state: each test failed before its fix."""
from __future__ import annotations

import pytest

from nbmagic.store.history import HistoryError, query
from nbmagic.store.runs import RunStore

from test_runs_history import make_run


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "store")
    make_run(store, {"lr": 0.1}, {"val_loss": 0.5})
    make_run(store, {"lr": 0.01}, {"val_loss": 0.2})
    return store


def test_a_misspelt_where_or_sort_field_is_named_instead_of_matching_nothing(store):
    assert len(query(store, "val_loss<0.3")[0]) == 1
    with pytest.raises(HistoryError, match=r"--where 'val_los': no run has a metric or parameter 'val_los' \(metrics: val_loss; parameters: lr\)"):
        query(store, "val_los<0.3")
    with pytest.raises(HistoryError, match="--sort 'metric.lr': no run has"):
        query(store, sort="-metric.lr")
    # a field some runs lack is fine, and so are the run's own columns
    make_run(store, {"lr": 0.2, "depth": 3}, {"val_loss": 0.9})
    assert len(query(store, "depth>2", sort="status,-duration")[0]) == 1
    assert query(RunStore(store.root / "empty"), "val_los<0.3")[1] == 0
