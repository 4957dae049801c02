"""A reused cell leaves the notebook's classes and pandas' copy-on-write sharing as running it would."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.reuse_cells import restart_all
from helpers.shell import run_ok


@pytest.fixture(autouse=True)
def _cow_mode() -> Any:
    """pandas' copy-on-write mode is process-wide: each test leaves it as it found it."""
    pd = pytest.importorskip("pandas")
    mode = pd.options.mode.copy_on_write
    yield
    pd.options.mode.copy_on_write = mode


CLASS_CHANGES = {
    "through type()": ("class Cfg:\n    lr = 0.1\nobj = Cfg()\n", "type(obj).lr = 0.5\n", "Cfg.lr", 0.5),
    "through __class__": ("class Cfg:\n    lr = 0.1\nobj = Cfg()\n", "obj.__class__.lr = 0.5\n", "Cfg.lr", 0.5),
    "in a notebook function": (
        "class Cfg:\n    lr = 0.1\ndef bump():\n    Cfg.lr = 0.5\n",
        "bump()\n",
        "Cfg.lr",
        0.5,
    ),
    "a metaclass attribute": (
        "class Meta(type):\n    registry = []\nclass A(metaclass=Meta):\n    pass\n",
        "A.registry.append(1)\n",
        "len(Meta.registry)",
        1,
    ),
    "a method rebound": (
        "class Model:\n    def predict(self):\n        return 1\n    def predict_v2(self):\n        return 2\n",
        "Model.predict = Model.predict_v2\n",
        "Model().predict()",
        2,
    ),
}


@pytest.mark.parametrize("case", sorted(CLASS_CHANGES))
def test_a_class_changed_by_the_step_makes_it_run(ip: Any, capsys: Any, case: str) -> None:
    pre, body, expr, ran = CLASS_CHANGES[case]
    first, second = restart_all(ip, capsys, [pre, "%%step s\n" + body + "z = 1\n"])
    assert "cannot be reused next time (it changes class" in first
    assert "reused from run" not in second
    assert eval(expr, ip.user_ns) == ran  # noqa: S307 - the test's own expression


def test_an_unchanged_class_keeps_the_step_reusable(ip: Any, capsys: Any) -> None:
    pre = "class Cfg:\n    lr = 0.1\n    def f(self):\n        return self.lr\nobj = Cfg()\n"
    first, second = restart_all(ip, capsys, [pre, "%%step s\nz = obj.f() * 2\n"])
    assert "cannot be reused" not in first
    assert "s: reused from run" in second
    assert ip.user_ns["z"] == 0.2


FRAME = "%%step s\nimport pandas as pd\ndf = pd.DataFrame({'x': [1.0, 2.0], 'y': [3.0, 4.0]})\ny = df['y']\n"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ("y.attrs['unit'] = 'kg'\n", "y.attrs == {'unit': 'kg'}"),
        ("y.note = 'kg'\n", "getattr(y, 'note', None) == 'kg'"),
        ("y.flags.allows_duplicate_labels = False\n", "y.flags.allows_duplicate_labels is False"),
    ],
)
def test_a_column_with_state_of_its_own_is_not_loaded_as_the_frames_column(
    ip: Any, capsys: Any, extra: str, check: str
) -> None:
    restart_all(ip, capsys, ["import pandas as pd\npd.options.mode.copy_on_write = False", FRAME + extra])
    import numpy as np

    assert eval(check, ip.user_ns)  # noqa: S307 - the test's own expression
    y, df = ip.user_ns["y"], ip.user_ns["df"]
    assert np.shares_memory(y.to_numpy(), df["y"].to_numpy())  # as running leaves them


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("then", "now"), [(True, False), (False, True)])
def test_results_kept_under_the_other_copy_on_write_mode_make_the_cell_run(
    ip: Any, capsys: Any, then: bool, now: bool
) -> None:
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, f"import pandas as pd\npd.options.mode.copy_on_write = {then}")
    run_ok(ip, FRAME)
    ip.user_ns.pop("df")
    ip.user_ns.pop("y")
    run_ok(ip, f"pd.options.mode.copy_on_write = {now}")
    capsys.readouterr()
    run_ok(ip, FRAME)
    out = capsys.readouterr().out
    assert "s: runs (cannot be reused: its results were kept with pandas' copy_on_write" in out, out
    run_ok(ip, "y.iloc[0] = 99.0")
    assert bool(ip.user_ns["df"]["y"].iloc[0] == 99.0) is (not now)  # a write through y reaches df only without it
    ip.user_ns.pop("df")
    ip.user_ns.pop("y")
    run_ok(ip, FRAME)
    assert "s: reused from run" in capsys.readouterr().out  # the same mode: reused as before


def test_odd_classes_are_read_without_error_and_without_false_changes() -> None:
    from nbmagic.run.reuse_classes import changed_class, class_state

    namespace: dict[str, Any] = {}
    code = (
        "import functools, weakref\n"
        "class M(type):\n    def __eq__(cls, other):\n        raise RuntimeError('no')\n"
        "class B(metaclass=M):\n    pass\n"  # an unhashable class
        "class Lazy:\n    cache = weakref.WeakValueDictionary()\n"
        "    @functools.cached_property\n    def v(self):\n        return 1\n"
        "obj = Lazy()\n"
    )
    exec(code, namespace)  # noqa: S102
    for name in ("M", "B", "Lazy"):
        namespace[name].__module__ = "__main__"
    state = class_state(namespace, ["B", "obj", "Lazy"])  # read by the cell: compared by content
    assert namespace["obj"].v == 1
    assert changed_class(state) is None
    namespace["Lazy"].cache = weakref_dict = __import__("weakref").WeakValueDictionary()
    assert weakref_dict is not None and changed_class(state) == "Lazy"  # rebound: seen by object


def test_classes_the_cell_does_not_read_are_compared_without_their_contents(monkeypatch: Any) -> None:
    import nbmagic.runtime.step as runtime_step
    from nbmagic.run.reuse_classes import changed_class, class_state

    namespace: dict[str, Any] = {}
    exec("class Lookup:\n    table = {i: str(i) for i in range(1000)}\n    items = []\n", namespace)  # noqa: S102
    lookup = namespace["Lookup"]
    lookup.__module__ = "__main__"
    calls: list[Any] = []
    real = runtime_step.fingerprint
    monkeypatch.setattr(runtime_step, "fingerprint", lambda value: calls.append(value) or real(value))
    state = class_state(namespace, [])
    assert calls == []  # no content hashed: a large class-level table costs nothing
    lookup.items.append(1)  # a function the step calls appends: seen by its length
    assert changed_class(state) == "Lookup"
    assert class_state(namespace, ["Lookup"]) and calls  # read by the cell: by content


def test_a_column_plotted_is_still_the_frames_column() -> None:
    pd = pytest.importorskip("pandas")
    from nbmagic.run.reuse_parts import _plain

    frame = pd.DataFrame({"a": [1.0, 2.0]})
    column = frame["a"]
    _ = column.plot  # pandas caches its plot accessor on the Series
    assert _plain(column)
