"""A real Jupyter kernel (nbclient): run a pipeline, forget the model, %restore it, predict; %lineage and %runs show."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

CELLS = [
    "%load_ext nbmagic",
    "from sklearn.datasets import load_iris\nfrom sklearn.tree import DecisionTreeClassifier",
    "%%pipeline_parameters\ndepth = 3",
    "%%step load\nX, y = load_iris(return_X_y=True)",
    "%%step train\nmodel = DecisionTreeClassifier(max_depth=depth, random_state=0).fit(X, y)\nacc = float(model.score(X, y))",
    "%pipeline_metrics acc",
    "run = %compile_run --quiet\nexpected = list(run.value('model').predict(X[:10]))\nprint(run.status)",
    "del model, X\n%restore last --vars model,X",
    "print('PRED', list(model.predict(X[:10])) == expected, model.get_params()['max_depth'])",
    "%lineage model",
    "%runs --sort -acc",
]


def test_restore_in_a_real_kernel(tmp_path, nbmagic_home):
    path = tmp_path / "restore_demo.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nbformat.write(nb, path)
    env = {**os.environ, "JPY_SESSION_NAME": str(path), "NBMAGIC_HOME": str(nbmagic_home)}
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)

    def text(index: int) -> str:
        parts = []
        for out in nb.cells[index].outputs:
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/html", "") + out["data"].get("text/plain", ""))
        return "".join(parts)

    assert "done" in text(6)
    restored = text(7)
    assert "<table>" in restored and "sklearn.tree" in restored and "model" in restored  # HTML report in a notebook
    assert "PRED True 3" in text(8)
    lineage = text(9)
    assert "<svg" in lineage and "step train" in lineage and "depth=3" in lineage and "input X" in lineage
    assert "<table>" in text(10) and "acc=" in text(10)
