"""Two real Jupyter kernels (nbclient), each with its own ``$NBMAGIC_HOME``, share one S3 store (moto on
127.0.0.1): the first runs ``%compile_run`` and a local ``%katib``; the second lists the runs and restores the
run and the best trial; ``nbmagic run`` from a third home writes there too."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from helpers.notebook_kernel import execute_cells, home_kernel_env


@pytest.mark.slow
def test_two_kernels_share_one_store_run_tune_and_restore_best(tmp_path, s3_store):
    alice = home_kernel_env(s3_store.env(), tmp_path / "alice", uri_in_notebook=True)  # the notebook names it
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            f"%pipeline_config --store {s3_store.uri}",
            "%%pipeline_parameters\nc = 1.0",
            "%%step train\nimport numpy as np\nw = np.full(3, c)\nloss = (c - 3.0) ** 2",
            "%pipeline_metrics loss",
            "run = %compile_run --quiet\nprint('RUN', run.id, run.status)",
            'exp = %katib --param "c=double(0,6)" --algorithm random --seed 0 --max-trials 4 --name team-study --quiet\n'
            "exp.wait()\nprint('BEST', exp.best.run, exp.best.objective)",
        ],
        alice,
        tmp_path,
    )
    run_id = texts[5].split()[1]
    assert texts[5].split()[2] == "done", texts[5]
    best_run, best_loss = texts[6].split("BEST")[-1].split()[:2]
    bob = home_kernel_env(s3_store.env(), tmp_path / "bob")
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            "table = %runs --limit 0\nprint(len(table.runs), [(r.id, r.experiment) for r in table.runs])",
            "%restore best\nprint('RESTORED', c, list(w), loss)",
            f"del w\n%restore {run_id} --vars w\nprint('W', list(w))",
            "%lineage loss",
        ],
        bob,
        tmp_path,
    )
    assert texts[1].startswith("5 ") and run_id in texts[1] and best_run in texts[1] and "team-study" in texts[1]
    restored = texts[2].split("RESTORED")[-1].split()
    assert f"run {best_run}" in texts[2]
    c, loss = float(restored[0]), float(restored[-1])
    assert loss == pytest.approx(float(best_loss)) and loss == pytest.approx((c - 3.0) ** 2)
    assert "W [np.float64(1.0), np.float64(1.0), np.float64(1.0)]" in texts[3] or "W [1.0, 1.0, 1.0]" in texts[3]
    assert "step train" in texts[4]
    # the command line writes to the same store
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(src)
        for src in (
            "%load_ext nbmagic",
            f"%pipeline_config --store {s3_store.uri}",
            "%%pipeline_parameters\nk = 2",
            "%%step square\nsq = k * k",
            "%pipeline_metrics sq",
        )
    ]
    nbformat.write(nb, tmp_path / "cli.ipynb")
    carol = home_kernel_env(s3_store.env(), tmp_path / "carol", uri_in_notebook=True)  # %pipeline_config names it
    done = subprocess.run(
        [sys.executable, "-m", "nbmagic.cli", "run", str(tmp_path / "cli.ipynb"), "--param", "k=7", "--quiet"],
        env=carol,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    texts = execute_cells(["%load_ext nbmagic", "%restore last\nprint('SQ', sq)"], bob, tmp_path)
    assert "SQ 49" in texts[1]


@pytest.mark.slow
def test_the_compiled_yaml_on_kfp_local_records_its_run_in_the_store(tmp_path, s3_store, monkeypatch):
    from kfp import components, local

    from helpers.store_homes import scaled_mean_plan
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.pipeline.settings import StepSettings
    from nbmagic.restore import restore
    from nbmagic.store.runs import RunStore

    plan = scaled_mean_plan("kfp-demo")
    defaults = StepSettings(store=s3_store.uri, store_secret="team-s3")
    monkeypatch.delenv("NBMAGIC_STORE_URI")  # the URI is compiled in
    yaml_text = compile_pipeline(plan, output=tmp_path / "p.yaml", defaults=defaults)
    assert s3_store.uri in yaml_text and "team-s3" in yaml_text and "AWS_SECRET_ACCESS_KEY" in yaml_text
    for secret in (s3_store.key, "testing-secret-access-key", s3_store.endpoint):
        assert secret not in yaml_text  # names of secret keys only, never a value
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = components.load_component_from_file(str(tmp_path / "p.yaml"))(scale=2.0)
    assert task.outputs  # the pipeline ran
    monkeypatch.setenv("NBMAGIC_STORE_URI", s3_store.uri)
    reader = RunStore(tmp_path / "reader" / "store")
    (run,) = reader.list_runs()
    assert (run.pipeline, run.status, run.kind, run.metrics) == ("kfp-demo", "done", "kfp", {"mean": 5.0})
    assert run.parameters == {"scale": 2.0}
    ns: dict = {}
    restore(reader, run.id, namespace=ns)
    assert list(ns["X"]) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] and ns["mean"] == 5.0
    assert reader.run_dag(run.id) == {"load": [], "fit": ["load"]}
    # a Katib trial that ran this pipeline on KFP says so in the store: `%restore best` then finds the run there
    from types import SimpleNamespace

    from nbmagic.tune import trial

    finished = SimpleNamespace(id=run.id, status="SUCCEEDED", metrics={"mean": 5.0}, wait=lambda **_: None)
    argv = ["--host", "http://kfp.invalid", "--pipeline-package", str(tmp_path / "p.yaml"), "--pipeline-name"]
    argv += ["kfp-demo", "--type", "scale=float", "--param", "scale=2.0", "--metric", "mean", "--store", s3_store.uri]
    argv += ["--katib-experiment", "katib-demo", "--goal", "minimize"]
    assert trial.main(argv, submit=lambda *a, **k: finished) == 0
    other = RunStore(tmp_path / "other" / "store")
    assert other.resolve_run("best") == run.id == other.resolve_run("best:katib-demo")
    ns = {}
    restore(other, "best", namespace=ns, names=["X"])
    assert list(ns["X"]) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert other.get_run(run.id).experiment == "katib-demo" and other.get_run(run.id).status == "done"
