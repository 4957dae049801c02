"""Reuse and memory two values share (frames and tensors over arrays), and subclasses of built-in types."""

from __future__ import annotations

import sys

import pytest

from helpers.shell import run_ok


def _reuse_twice(ip, capsys, cell, names):
    """Run the cell, forget its names (a restart), run it again: (what each run said)."""
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    first = capsys.readouterr().out
    for name in names:
        ip.user_ns.pop(name, None)
    run_ok(ip, cell)
    return first, capsys.readouterr().out


def _check(ip, expression):
    ip.user_ns.pop("ok_", None)
    run_ok(ip, f"ok_ = bool({expression})")
    return ip.user_ns.pop("ok_")


@pytest.mark.parametrize(
    ("make", "change", "check", "said"),
    [
        (
            "arr = np.zeros((1000, 3))\ndf = pd.DataFrame(arr, copy=False)",
            "arr[0, 0] = 5",
            "df.iloc[0, 0] == 5",
            "'df' and 'arr' share memory",
        ),
        ("arr = np.zeros(4)\ns = pd.Series(arr, copy=False)", "arr[0] = 5", "s.iloc[0] == 5", "'s' and 'arr' share"),
        (
            "df = pd.DataFrame({'a': [1.0, 2.0], 'b': [3.0, 4.0]})\nv = df.values",
            "v[0, 0] = 9",
            "df.iloc[0, 0] == 9",
            "'v' and 'df' share memory",
        ),
        (
            "df = pd.DataFrame({'a': [1.0, 2.0], 'b': [3.0, 4.0]})\ns = pd.Series(df['a'].to_numpy(), copy=False)",
            "s.iloc[0] = 9",
            "df.iloc[0, 0] == 9",
            "'s' and 'df' share memory",
        ),
    ],
    ids=["frame-over-array", "series-over-array", "frame-values", "series-over-a-frames-column"],
)
def test_pandas_objects_sharing_memory_with_another_value_make_the_cell_run(ip, capsys, make, change, check, said):
    import warnings

    cell = f"%%step s\nimport numpy as np\nimport pandas as pd\n{make}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' chained-assignment warning for the change through a column
        first, second = _reuse_twice(ip, capsys, cell, ("arr", "df", "s", "v"))
        run_ok(ip, change)
        assert _check(ip, check), second  # as running the cell gives
    assert "reused from run" not in second
    assert f"s: cannot be reused next time ({said}" in first


def test_a_frame_over_an_array_another_step_made_makes_the_cell_run(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "%%step load\nimport numpy as np\narr = np.zeros((10, 2))\n")
    run_ok(ip, "%%step wrap\nimport pandas as pd\ndf = pd.DataFrame(arr, copy=False)\n")
    out = capsys.readouterr().out
    assert "wrap: cannot be reused next time ('df' and 'arr' share memory" in out


def test_a_series_over_a_modules_array_makes_the_cell_run(ip, capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rmarr.py").write_text("import numpy as np\nARR = np.zeros(5)\n")
    try:
        first, second = _reuse_twice(
            ip, capsys, "%%step s\nimport pandas as pd\nimport rmarr\ns = pd.Series(rmarr.ARR, copy=False)\n", ("s",)
        )
        assert "s: cannot be reused next time ('s' shares memory with rmarr.ARR" in first
        assert "reused from run" not in second
    finally:
        sys.modules.pop("rmarr", None)


def test_a_copied_frame_of_extension_columns_is_reused(ip, capsys):
    pytest.importorskip("pyarrow")
    cell = (
        "%%step s\nimport pandas as pd\n"
        "df = pd.DataFrame({'s': pd.array(['a', 'b'], dtype='string[pyarrow]'), 'c': pd.Categorical(['x', 'y']),"
        " 'i': pd.array([1, 2], dtype='Int64'), 't': pd.date_range('2020', periods=2, tz='UTC')})\n"
        "df2 = df.copy()\n"
    )
    _, second = _reuse_twice(ip, capsys, cell, ("df", "df2"))
    assert "s: reused from run" in second
    assert ip.user_ns["df2"].equals(ip.user_ns["df"]) and ip.user_ns["df2"] is not ip.user_ns["df"]


def test_frames_sharing_only_an_index_and_copied_columns_are_reused(ip, capsys):
    cell = (
        "%%step s\nimport pandas as pd\ndf = pd.DataFrame({'a': [1.0, 2.0], 'b': [3.0, 4.0], 'y': [0, 1]})\n"
        "X = df[['a', 'b']]\ny = df['y'].copy()\n"
    )
    _, second = _reuse_twice(ip, capsys, cell, ("df", "X", "y"))
    assert "s: reused from run" in second
    assert list(ip.user_ns["y"]) == [0, 1] and list(ip.user_ns["X"].columns) == ["a", "b"]


@pytest.mark.parametrize(
    ("make", "change", "check", "said"),
    [
        ("t = torch.from_numpy(arr)", "arr[0, 0] = 5", "t[0, 0] == 5", "'t' and 'arr' share memory"),
        ("t = torch.zeros(4, 3)\nv = t[0]", "t[0, 0] = 5", "v[0] == 5", "'v' and 't' share memory"),
        ("t = torch.zeros(4, 3)\nt2 = t.view(-1)", "t2[0] = 5", "t[0, 0] == 5", "'t2' and 't' share memory"),
    ],
    ids=["from-numpy", "row", "view"],
)
def test_tensors_sharing_memory_make_the_cell_run(ip, capsys, make, change, check, said):
    pytest.importorskip("torch")
    cell = f"%%step s\nimport numpy as np\nimport torch\narr = np.zeros((4, 3))\n{make}\n"
    first, second = _reuse_twice(ip, capsys, cell, ("arr", "t", "v", "t2"))
    run_ok(ip, change)
    assert _check(ip, check), second
    assert "reused from run" not in second
    assert f"s: cannot be reused next time ({said}" in first


def test_separate_tensors_are_reused(ip, capsys):
    pytest.importorskip("torch")
    cell = "%%step s\nimport torch\nt = torch.arange(6.0)\nu = t.clone()\nsame = t\n"
    _, second = _reuse_twice(ip, capsys, cell, ("t", "u", "same"))
    assert "s: reused from run" in second
    assert ip.user_ns["same"] is ip.user_ns["t"] and ip.user_ns["u"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_tensor_holding_gradients_makes_the_cell_run(ip, capsys):
    pytest.importorskip("torch")
    cell = "%%step s\nimport torch\nw = torch.ones(3, requires_grad=True)\n(w * 2).sum().backward()\n"
    first, second = _reuse_twice(ip, capsys, cell, ("w",))
    assert "s: cannot be reused next time (a Tensor holding gradients" in first
    assert "reused from run" not in second and ip.user_ns["w"].grad is not None


@pytest.mark.parametrize(
    ("define", "make", "change", "check"),
    [
        ("class Tag(str):\n    pass\n", "t = Tag('x')\nt.rows = rows", "rows.append(1)", "t.rows == [1]"),
        ("class Num(int):\n    pass\n", "t = Num(3)\nt.rows = rows", "rows.append(1)", "t.rows == [1]"),
        (
            "import collections\nclass Pair(collections.namedtuple('Pair', 'a b')):\n    pass\n",
            "t = Pair(1, 2)\nt.rows = rows",
            "rows.append(1)",
            "t.rows == [1]",
        ),
        (
            "class Slotted(float):\n    __slots__ = ('rows',)\n",
            "t = Slotted(1.5)\nt.rows = rows",
            "rows.append(1)",
            "t.rows == [1]",
        ),
    ],
    ids=["str", "int", "namedtuple", "float-slots"],
)
def test_a_subclass_of_a_builtin_carrying_another_value_keeps_the_link(ip, capsys, define, make, change, check):
    run_ok(ip, define)
    cell = f"%%step s\nrows = []\n{make}\n"
    first, second = _reuse_twice(ip, capsys, cell, ("rows", "t"))
    run_ok(ip, change)
    assert _check(ip, check), second  # as running the cell gives
    assert "s: cannot be reused next time ('t' and 'rows' hold a shared object" in first


def test_paths_enum_members_and_a_librarys_float_subclass_are_still_reused(ip, capsys):
    cell = (
        "%%step s\nimport http\nimport pathlib\nimport numpy as np\np = pathlib.Path('a') / 'b'\n"
        "c = http.HTTPStatus.OK\nn = [1, np.float64(2.5), 'x']\n"
    )
    _, second = _reuse_twice(ip, capsys, cell, ("p", "c", "n", "np"))
    assert "s: reused from run" in second
    assert ip.user_ns["c"] is __import__("http").HTTPStatus.OK and ip.user_ns["n"] == [1, 2.5, "x"]


def test_an_instance_of_a_notebook_str_subclass_in_a_value_keeps_the_kernels_class(ip, capsys):
    run_ok(ip, "class Plain(str):\n    pass\n")
    _, second = _reuse_twice(ip, capsys, "%%step s\nn = [1, Plain('x')]\n", ("n",))
    assert type(ip.user_ns["n"][1]) is ip.user_ns["Plain"], second  # loaded by value it would be a copy of the class
    assert "s: runs (cannot be reused: 'n' is a function defined in the notebook or holds one, or of a class" in second


def test_a_runs_step_keeping_a_frame_over_its_array_notes_it_for_kernels(tmp_path):
    from helpers.plans import step
    from nbmagic.pipeline.model import PipelinePlan
    from nbmagic.run.local import LocalRunner
    from nbmagic.store.runs import RunStore

    code = "import numpy as np\nimport pandas as pd\narr = np.zeros((10, 2))\ndf = pd.DataFrame(arr, copy=False)\n"
    plan = PipelinePlan("mem", (step("t", code, outputs=("arr", "df"), modules=("numpy", "pandas")),), {}, ())
    run = LocalRunner(RunStore(tmp_path / "store")).run(plan)
    assert run.status == "done", run.error
    notes = [ref.get("kernel_reuse") for ref in run.steps["t"].outputs.values() if ref.get("kernel_reuse")]
    assert notes and "'df' and 'arr' share memory" in notes[0]


@pytest.fixture
def copy_on_write():
    import pandas as pd

    before = pd.options.mode.copy_on_write
    pd.set_option("mode.copy_on_write", True)
    yield
    pd.set_option("mode.copy_on_write", before)


_CHANGES = {  # what a later cell may do to a frame or to a column taken from it
    "df.iloc": lambda df, s: df.iloc.__setitem__((0, 0), 9.0),
    "s.iloc": lambda df, s: s.iloc.__setitem__(1, 7.0),
    "df.loc column": lambda df, s: df.loc.__setitem__((slice(None), "a"), 0.0),
    "df.fillna inplace": lambda df, s: df.fillna(0, inplace=True),
    "s += 1": lambda df, s: s.__iadd__(1),
    "s.clip inplace": lambda df, s: s.clip(0, 1, inplace=True),
    "df.values write": lambda df, s: df.values.__setitem__((0, 0), 5.0),
    "s.to_numpy write": lambda df, s: s.to_numpy().__setitem__(0, 5.0),
}


def _after(change, copies):
    """What a frame and its column hold after ``change``: made together, or stored and loaded apart (copies)."""
    import pickle
    import warnings

    import pandas as pd

    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    s = df["a"]
    if copies:
        df, s = pickle.loads(pickle.dumps(df)), pickle.loads(pickle.dumps(s))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            change(df, s)
    except Exception as exc:  # noqa: BLE001 - what happened is compared, an error included
        return type(exc).__name__
    return df.to_dict(), s.tolist()


def test_with_pandas_copy_on_write_a_column_beside_its_frame_behaves_as_copies_and_is_reusable(copy_on_write):
    import pandas as pd

    from nbmagic.run.reuse_links import links

    for name, change in _CHANGES.items():
        assert _after(change, copies=False) == _after(change, copies=True), name
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    assert links({"s": df["a"]}, {"df": df}) == (None, {})


def test_without_copy_on_write_a_column_beside_its_frame_does_not_behave_as_copies():
    import pandas as pd

    from nbmagic.run.reuse_links import links

    assert pd.options.mode.copy_on_write is not True
    assert any(_after(change, copies=False) != _after(change, copies=True) for change in _CHANGES.values())
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    assert links({"s": df["a"]}, {"df": df}) == (None, {"s": ["df", "a"]})  # loaded as the loaded frame's column
    assert (
        links({"s": pd.Series(df["a"].to_numpy(), copy=False)}, {"df": df})[0]
        == "'s' and 'df' share memory; loaded from the store they would be two copies"
    )


def test_with_pandas_copy_on_write_a_frame_over_an_array_still_makes_the_cell_run(ip, capsys, copy_on_write):
    cell = "%%step s\nimport numpy as np\nimport pandas as pd\narr = np.zeros(3)\ns = pd.Series(arr, copy=False)\n"
    first, second = _reuse_twice(ip, capsys, cell, ("arr", "s"))
    assert "s: cannot be reused next time ('s' and 'arr' share memory" in first
    run_ok(ip, "arr[0] = 5.0")
    assert _check(ip, "s.iloc[0] == 5.0")
