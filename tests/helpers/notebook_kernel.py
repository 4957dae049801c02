"""Run a list of cells in a fresh real kernel (nbclient), with its own environment and folder."""

from __future__ import annotations

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def execute_cells(cells: list[str], env: dict[str, str], folder) -> list[str]:
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


def store_kernel_env() -> dict[str, str]:
    """This process's environment for a kernel: the project importable, no store URI of the machine's."""
    base = {k: v for k, v in os.environ.items() if k != "NBMAGIC_STORE_URI"}
    base["PYTHONPATH"] = os.pathsep.join([ROOT, base.get("PYTHONPATH", "")])
    return base


def home_kernel_env(store_env: dict[str, str], home, *, uri_in_notebook: bool = False) -> dict[str, str]:
    """``store_kernel_env()`` on the store of ``store_env``, with a home of its own (``$NBMAGIC_HOME`` = ``home``);
    ``uri_in_notebook``: without ``NBMAGIC_STORE_URI``, as the notebook's ``%pipeline_config --store`` names it."""
    env = {**store_kernel_env(), **store_env, "NBMAGIC_HOME": str(home)}
    if uri_in_notebook:
        env.pop("NBMAGIC_STORE_URI")
    return env
