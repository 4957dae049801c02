"""Two real Jupyter kernels (nbclient), each with its own ``$NBMAGIC_HOME``, share one Cloud Storage store
(fake-gcs-server on 127.0.0.1): the first runs a pipeline, the second lists it with ``%runs`` and restores it."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(cells: list[str], env: dict[str, str], folder) -> list[str]:
    """Run ``cells`` in a fresh kernel; each cell's text output."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    client.execute(env=env)
    texts = []
    for cell in nb.cells:
        parts = []
        for out in cell.outputs:
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
        texts.append("".join(parts))
    return texts


@pytest.mark.slow
def test_two_kernels_share_one_gs_store(tmp_path, gcs_store):
    base = {k: v for k, v in os.environ.items() if k != "NBMAGIC_STORE_URI"}
    base["PYTHONPATH"] = os.pathsep.join([ROOT, base.get("PYTHONPATH", "")])
    alice = {**base, **gcs_store.env(), "NBMAGIC_HOME": str(tmp_path / "alice")}
    alice.pop("NBMAGIC_STORE_URI")  # the notebook says where its store is
    texts = _execute(
        [
            "%load_ext nbmagic",
            f"%pipeline_config --store {gcs_store.uri}",
            "%%pipeline_parameters\nc = 1.5",
            "%%step train\nimport numpy as np\nw = np.full(3, c)\nloss = (c - 3.0) ** 2",
            "%%step report\nsummary = {'mean': float(w.mean()), 'loss': loss}",
            "%pipeline_metrics loss",
            "run = %compile_run --quiet\nprint('RUN', run.id, run.status)",
        ],
        alice,
        tmp_path,
    )
    run_id, status = texts[6].split("RUN")[-1].split()[:2]
    assert status == "done", texts[6]
    assert [k for k in gcs_store.keys("team/runs/runs/") if k.endswith(f"-{run_id}.json")]
    bob = {**base, **gcs_store.env(), "NBMAGIC_HOME": str(tmp_path / "bob")}
    texts = _execute(
        [
            "%load_ext nbmagic",
            "table = %runs --limit 0\nprint('RUNS', [(r.id, r.status, r.metrics) for r in table.runs])",
            f"%restore {run_id}\nprint('RESTORED', c, list(map(float, w)), loss, summary)",
            "del w, summary\n%restore last --vars summary\nprint('LAST', summary, 'w' in dir())",
            "%lineage summary",
        ],
        bob,
        tmp_path,
    )
    assert f"RUNS [('{run_id}', 'done', {{'loss': 2.25}})]" in texts[1], texts[1]
    assert "RESTORED 1.5 [1.5, 1.5, 1.5] 2.25 {'mean': 1.5, 'loss': 2.25}" in texts[2], texts[2]
    assert "LAST {'mean': 1.5, 'loss': 2.25} False" in texts[3], texts[3]
    assert "step report" in texts[4] and "step train" in texts[4], texts[4]
    assert not (tmp_path / "alice" / "store").samefile(tmp_path / "bob" / "store")
    assert any((tmp_path / "bob" / "store").rglob("manifest.json")), "bob's values were pulled into his own cache"
