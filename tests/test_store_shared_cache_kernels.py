"""Two real Jupyter kernels (nbclient), each with its own ``$NBMAGIC_HOME``, share one S3 store (moto on
127.0.0.1): the first runs ``%compile_run``; the second, with the same notebook code and inputs, takes every step
from the shared cache (as reused cells and as a run), nothing executes there, and it reads the first's step logs."""

from __future__ import annotations

import pytest

from helpers.notebook_kernel import execute_cells, home_kernel_env


@pytest.mark.slow
def test_a_second_home_takes_the_firsts_steps_from_the_shared_cache_and_reads_their_logs(tmp_path, s3_store):
    marker = tmp_path / "executions.txt"
    notebook = [
        "%%pipeline_parameters\nc = 2.0",
        f"%%step make\nimport numpy as np\nopen({str(marker)!r}, 'a').write('make\\n')\nprint('making', c)\n"
        "w = np.full(3, c)",
        f"%%step fit\nopen({str(marker)!r}, 'a').write('fit\\n')\nprint('fitting', w.sum())\n"
        "loss = float((w.sum() - 3.0) ** 2)",
    ]
    alice = home_kernel_env(s3_store.env(), tmp_path / "alice", uri_in_notebook=True)  # the notebook names it
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            f"%pipeline_config --store {s3_store.uri}",
            *notebook,
            "run = %compile_run --quiet\nprint('RUN', run.id, run.status, [s.status for s in run.steps.values()])",
        ],
        alice,
        tmp_path,
    )
    _, run_id, status, *states = texts[-1].split()
    assert status == "done" and "cached" not in " ".join(states), texts[-1]
    done = marker.read_text()
    assert done.count("make") == 2 and done.count("fit") == 2  # once in alice's kernel, once in her run

    bob = home_kernel_env(s3_store.env(), tmp_path / "bob", uri_in_notebook=True)
    texts = execute_cells(
        [
            "%load_ext nbmagic",
            f"%pipeline_config --store {s3_store.uri}\n%pipeline_config --reuse",
            *notebook,
            "run = %compile_run --quiet\nprint('RUN', run.id, run.status, [s.status for s in run.steps.values()])",
            "print('VALUES', list(map(float, w)), loss)",
            f"from nbmagic.api import logs\nprint('LOG', logs({run_id!r}, 'fit'))",
            "%lineage loss",
        ],
        bob,
        tmp_path,
    )
    assert marker.read_text() == done, texts  # no step executed in bob's home: not as a cell, not in his run
    assert f"make: reused from run {run_id}" in texts[3] and "making 2.0" in texts[3]  # alice's output, replayed
    assert f"fit: reused from run {run_id}" in texts[4] and "fitting 6.0" in texts[4]
    for text, name in ((texts[3], "make"), (texts[4], "fit")):  # the shared hit said in the cell, naming the run
        assert f"step {name!r} taken from the shared cache: computed in run {run_id} on " in text, text
    assert texts[5].split()[2:] == ["done", "['cached',", "'cached']"], texts[5]
    assert "VALUES [2.0, 2.0, 2.0] 9.0" in texts[6]
    assert "LOG fitting 6.0" in texts[7]
    assert run_id in texts[8]  # lineage names the run that computed the value

    # a third home, after the entry of `fit` was changed in the store: that entry is a miss (one line), fit runs
    import json

    client = s3_store.client()
    for key in s3_store.keys("team/runs/cache/"):
        body = json.loads(client.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read())
        if body["entry"]["step"] == "fit":
            body["entry"]["outputs"]["loss"]["hash"] = body["entry"]["outputs"]["loss"]["hash"][::-1]
            client.put_object(Bucket=s3_store.bucket, Key=key, Body=json.dumps(body).encode())
    carol = {**bob, "NBMAGIC_HOME": str(tmp_path / "carol")}
    texts = execute_cells(
        ["%load_ext nbmagic", f"%pipeline_config --store {s3_store.uri}\n%pipeline_config --reuse", *notebook],
        carol,
        tmp_path,
    )
    assert f"make: reused from run {run_id}" in texts[3]
    assert "fitting 6.0" in texts[4] and "reused" not in texts[4]
    assert texts[4].count("not signed with the team key") == 1, texts[4]
    assert marker.read_text() == done + "fit\n"
