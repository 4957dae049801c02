"""Two real Jupyter kernels (nbclient), each with its own ``$NBMAGIC_HOME``, share one Cloud Storage store
(fake-gcs-server on 127.0.0.1): the first runs a pipeline and a local ``%katib``, the second lists them with ``%runs`` and restores the run and
the best trial."""

from __future__ import annotations

import pytest

from helpers.notebook_kernel import execute_cells, home_kernel_env


@pytest.mark.slow
def test_two_kernels_share_one_gs_store(tmp_path, gcs_store):
    alice = home_kernel_env(gcs_store.env(), tmp_path / "alice", uri_in_notebook=True)  # the notebook names it
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            f"%pipeline_config --store {gcs_store.uri}",
            "%%pipeline_parameters\nc = 1.5",
            "%%step train\nimport numpy as np\nw = np.full(3, c)\nloss = (c - 3.0) ** 2",
            "%%step report\nsummary = {'mean': float(w.mean()), 'loss': loss}",
            "%pipeline_metrics loss",
            "run = %compile_run --quiet\nprint('RUN', run.id, run.status)",
            'exp = %katib --param "c=double(0,6)" --algorithm random --seed 0 --max-trials 3 --name gs-study --quiet\n'
            "exp.wait()\nprint('BEST', exp.best.run, exp.best.objective)",
        ],
        alice,
        tmp_path,
    )
    run_id, status = texts[6].split("RUN")[-1].split()[:2]
    assert status == "done", texts[6]
    assert [k for k in gcs_store.keys("team/runs/runs/") if k.endswith(f"-{run_id}.json")]
    best_run, best_loss = texts[7].split("BEST")[-1].split()[:2]
    bob = home_kernel_env(gcs_store.env(), tmp_path / "bob")
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            "table = %runs --limit 0\nprint('RUNS', [(r.id, r.status, r.metrics) for r in table.runs])",
            f"%restore {run_id}\nprint('RESTORED', c, list(map(float, w)), loss, summary)",
            "del w, summary\n%restore last --vars summary\nprint('LAST', summary['mean'], summary['loss'], 'w' in dir())",
            "%lineage summary",
            "%restore best\nprint('BEST', c, loss)",
        ],
        bob,
        tmp_path,
    )
    assert f"('{run_id}', 'done', {{'loss': 2.25}})" in texts[1] and texts[1].count("'done'") == 4, texts[1]
    assert "RESTORED 1.5 [1.5, 1.5, 1.5] 2.25 {'mean': 1.5, 'loss': 2.25}" in texts[2], texts[2]
    mean, last_loss, has_w = texts[3].split("LAST")[-1].split()  # the newest run: the last trial
    assert float(last_loss) == pytest.approx((float(mean) - 3.0) ** 2) and has_w == "False", texts[3]
    assert "step report" in texts[4] and "step train" in texts[4], texts[4]
    assert f"run {best_run}" in texts[5], texts[5]
    c, loss = map(float, texts[5].split("BEST")[-1].split()[:2])
    assert loss == pytest.approx(float(best_loss)) and loss == pytest.approx((c - 3.0) ** 2)
    assert not (tmp_path / "alice" / "store").samefile(tmp_path / "bob" / "store")
    assert any((tmp_path / "bob" / "store").rglob("manifest.json")), "bob's values were pulled into his own cache"
