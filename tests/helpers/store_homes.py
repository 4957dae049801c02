"""Homes of their own and a small two-step plan, for tests of stores shared between homes."""

from __future__ import annotations

from pathlib import Path

from helpers.plans import step
from nbmagic.pipeline.model import PipelinePlan
from nbmagic.store.runs import RunStore


def demo_plan(size: int = 10, name: str = "demo") -> PipelinePlan:
    """``make`` (an array of ``size`` floats and its total, a metric) -> ``use`` (a table from it)."""
    make = step(
        "make",
        f"import numpy as np\nx = np.arange({size}, dtype='float64')\ntotal = float(x.sum())",
        outputs=("x", "total"),
        metrics=("total",),
    )
    use = step("use", "table = {'n': len(x), 'first': float(x[0])}", inputs={"x": "make"}, outputs=("table",), index=2)
    return PipelinePlan(name, (make, use), {}, ("total",))


def home_store(tmp_path: Path, name: str) -> RunStore:
    """The run store of a home of its own under ``tmp_path``."""
    return RunStore(tmp_path / name / "store")
