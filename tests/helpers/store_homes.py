"""Homes of their own and a small two-step plan, for tests of stores shared between homes."""

from __future__ import annotations

import os
import subprocess
import sys
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


def start_writers(script: Path, count: int, store_env: dict[str, str], homes: Path) -> list[subprocess.Popen]:
    """``count`` processes running ``script N`` at once, each in a home of its own (``homes/writerN``) on the store
    of ``store_env``; their output (stdout, stderr) is text, to be read with ``communicate``."""
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(n)],
            env={**os.environ, **store_env, "NBMAGIC_HOME": str(homes / f"writer{n}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]


def shared_folder(tmp_path: Path, monkeypatch, name: str = "shared") -> Path:
    """A shared folder store, ``file://`` ``tmp_path/name`` signed with the team key ``"k" * 32``, set as this
    process's store (``NBMAGIC_STORE_URI``, ``NBMAGIC_STORE_KEY``); the folder."""
    folder = tmp_path / name
    monkeypatch.setenv("NBMAGIC_STORE_URI", f"file://{folder}")
    monkeypatch.setenv("NBMAGIC_STORE_KEY", "k" * 32)
    return folder


def keyed_plan() -> PipelinePlan:
    """One step, ``make``, assigning a small list ``x``: the run the signed-record tests publish."""
    return PipelinePlan("keyed", (step("make", "x = [1, 2]", outputs=("x",)),), {}, ())


def restamp_record(folder: Path, run_id: str, shift_ms: int) -> None:
    """Rename run ``run_id``'s one loose record in the shared ``folder`` as if its writer's clock were ``shift_ms``
    milliseconds ahead (behind, when negative)."""
    (record,) = (folder / "runs").glob(f"*-{run_id}.json")
    stamp, _, rest = record.name.partition("-")
    record.rename(record.with_name(f"{int(stamp) + shift_ms:013d}-{rest}"))


def saved_value(tmp_path: Path) -> str:
    """A value folder ``tmp_path/value`` holding ``x = [1, 2]`` as a step saves it, for ``publish.publish_step``."""
    from nbmagic.runtime import marshal

    folder = tmp_path / "value"
    folder.mkdir()
    marshal.save([1, 2], str(folder), "x")
    return str(folder)


def scaled_mean_plan(name: str) -> PipelinePlan:
    """``load`` (``X = arange(6) * scale``, parameter ``scale`` = 1.0) -> ``fit`` (``mean`` of X, a metric)."""
    from nbmagic.pipeline.model import Parameter

    return PipelinePlan(
        name,
        (
            step("load", "import numpy as np\nX = np.arange(6.0) * scale", params=("scale",), outputs=("X",)),
            step("fit", "mean = float(X.mean())", inputs={"X": "load"}, outputs=("mean",), metrics=("mean",), index=2),
        ),
        {"scale": Parameter("scale", 1.0, "float")},
        ("mean",),
    )
