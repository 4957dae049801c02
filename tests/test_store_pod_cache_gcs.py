"""The store's cache as a compiled step takes it from Cloud Storage: the component entry point on a gs:// store
(fake-gcs-server on 127.0.0.1), run twice with a team key; the second run pulls the values with the client's
download (``get_file``) and runs no code. A value file gone from the bucket is a miss: one line, the step runs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from nbmagic.runtime import marshal
from nbmagic.runtime.component import nbmagic_run

pytestmark = pytest.mark.slow  # the session's fake-gcs-server


class _Metrics:
    def __init__(self) -> None:
        self.logged: dict = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


@pytest.fixture
def pod(tmp_path, gcs_store):
    """Run one step through ``nbmagic_run`` as a pod would, on the test's gs:// store (team key set)."""
    marker = tmp_path / "ran.txt"
    source = tmp_path / "input-x"
    source.mkdir()
    marshal.save([1, 2, 3], source, "x")
    runs = {"n": 0}

    def run() -> SimpleNamespace:
        runs["n"] += 1
        out = tmp_path / f"run{runs['n']}"
        outputs = {n: SimpleNamespace(path=str(out / n), metadata={}) for n in ("y", "grid")}
        metrics = _Metrics()
        nbmagic_run(
            step="double",
            label="demo.ipynb cell 2",
            code=(
                f"open({str(marker)!r}, 'a').write('x')\nimport numpy as np\n"
                "y = [v * 2 for v in x]\ngrid = np.arange(300_000, dtype='float64') * 2\nloss = float(sum(y))"
            ),
            prelude="",
            parameters={"scale": 2.0},
            inputs={"x": SimpleNamespace(path=str(source), metadata={})},
            outputs=outputs,
            metric_names=("loss",),
            metrics=metrics,
            store={
                "uri": gcs_store.uri,
                "run": f"run-{runs['n']}",
                "pipeline": "demo",
                "steps": ["double"],
                "dag": {"double": []},
                "cache": True,
            },
        )
        return SimpleNamespace(
            y=marshal.load(out / "y", "y"),
            grid=marshal.load(out / "grid", "grid"),
            meta={n: a.metadata for n, a in outputs.items()},
            metrics=metrics.logged,
            ran=len(marker.read_text()) if marker.exists() else 0,
        )

    return SimpleNamespace(run=run, store=gcs_store)


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "store's cache" in line]


def test_a_second_run_on_a_gs_store_is_taken_from_its_cache(pod, capsys):
    first = pod.run()
    assert first.ran == 1 and _lines(capsys.readouterr().err) == []
    (entry_key,) = pod.store.keys("team/runs/podcache/")
    host = json.loads(pod.store.read(entry_key))["entry"]["host"]
    second = pod.run()
    captured = capsys.readouterr()
    assert _lines(captured.err) == [f"nbmagic: step 'double': taken from the store's cache (run run-1 on {host})"]
    assert second.ran == 1, "the cell did not run again"
    assert second.y == [2, 4, 6] and np.array_equal(second.grid, np.arange(300_000, dtype="float64") * 2)
    assert second.meta == first.meta and second.meta["grid"]["format"] == "npy"
    assert second.metrics == {"loss": 12.0}
    (record_key,) = [k for k in pod.store.keys("team/runs/runs/") if k.endswith("-run-2-double.json")]
    (ex,) = json.loads(pod.store.read(record_key))["record"]["executions"]
    assert (ex["state"], ex["properties"]["reused_from"]) == ("cached", {"run": "run-1", "step": "double"})


def test_a_value_file_missing_from_the_bucket_is_a_miss_and_the_step_runs(pod, capsys):
    first = pod.run()
    capsys.readouterr()
    digest = first.meta["grid"]["hash"]
    base = f"team/runs/objects/{digest[:2]}/{digest}/"
    (data,) = [k for k in pod.store.keys(base) if not k.endswith(("manifest.json", "manifest.sig"))]
    pod.store.client().bucket(pod.store.bucket).blob(data).delete()
    second = pod.run()
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and "not taken from the store's cache" in lines[0]
    assert f"lacks its file {data.rpartition('/')[2]}; removed from the store; the step runs" in lines[0]
    assert second.ran == 2 and np.array_equal(second.grid, np.arange(300_000, dtype="float64") * 2)
    assert sorted(pod.store.keys(base)) != [], "the step uploaded the value again"
    assert any(not k.endswith(("manifest.json", "manifest.sig")) for k in pod.store.keys(base))
