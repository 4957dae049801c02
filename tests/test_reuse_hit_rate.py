"""Ordinary notebook code stays reusable: the X/y split of a frame, loops, tries; and reuse leaves what running does."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.reuse_cells import restart_all
from helpers.shell import run_ok

LOAD = (
    "%%step load\nimport pandas as pd, numpy as np\n"
    "df = pd.read_csv(__import__('io').StringIO('a,b,target\\n1.0,2.0,0\\n3.0,4.0,1\\n5.0,6.0,0\\n'))\n"
)


SPLITS = {
    "column": ("X = df.drop(columns='target')\ny = df['target']\n", "y", "df.loc[1, 'target'] = 7", "y.iloc[0] = 5"),
    "values": (
        "X = df[['a', 'b']].values\ny = df['target'].values\n",
        "y",
        "df.loc[1, 'target'] = 7",
        "y[0] = 5",
    ),
    "iloc": ("X = df.iloc[:, :-1]\ny = df.iloc[:, -1]\n", "y", "df.iloc[1, 2] = 7", "y.iloc[0] = 5"),
    "tuple": ("X, y = df.iloc[:, :-1], df.iloc[:, -1]\n", "y", "df.iloc[1, 2] = 7", "y.iloc[0] = 5"),
}


def _read(ip: Any, part: str) -> tuple[Any, Any]:
    ns = ip.user_ns
    df, value = ns["df"], ns[part]
    if part == "X":
        return df.iloc[:, 0].tolist(), value.iloc[:, 0].tolist()
    return df.iloc[:, 2].tolist(), list(value.tolist())


def _shares(ip: Any, part: str) -> bool:
    import numpy as np

    value = ip.user_ns[part]
    values = value.to_numpy() if part != "X" and hasattr(value, "to_numpy") else value
    if part == "X":
        values = value.iloc[:, 0].to_numpy()
    return bool(np.shares_memory(ip.user_ns["df"].iloc[:, 0 if part == "X" else 2].to_numpy(), values))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(SPLITS))
def test_a_split_of_a_frame_is_reused_and_shares_its_memory_as_running_gives(ip, capsys, case):
    code, part, _, _ = SPLITS[case]
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, LOAD)
    run_ok(ip, "%%step split\n" + code)
    ran = _shares(ip, part)
    first, second = restart_all(ip, capsys, [LOAD, "%%step split\n" + code])
    assert "cannot be reused" not in first and "split: reused" in second, first + second
    assert ran and _shares(ip, part)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(SPLITS))
def test_after_reuse_a_change_in_place_shows_through_both_names(ip, capsys, case):
    code, part, change_frame, change_part = SPLITS[case]
    first, second = restart_all(ip, capsys, [LOAD, "%%step split\n" + code])
    assert "split: reused" in second, first + second
    run_ok(ip, change_frame)
    whole, taken = _read(ip, part)
    assert whole == taken and 7 in whole, (whole, taken)
    run_ok(ip, change_part)
    whole, taken = _read(ip, part)
    assert whole == taken and 5 in whole, (whole, taken)


@pytest.mark.filterwarnings("ignore")
def test_a_column_copied_is_reused_and_stays_apart(ip, capsys):
    first, second = restart_all(ip, capsys, [LOAD, "%%step split\ny = df['target'].copy()\n"])
    assert "split: reused" in second, first + second
    assert not _shares(ip, "y")


def test_a_frame_over_several_columns_of_another_runs_again(ip, capsys):
    """Whether ``df.iloc[:, :-1]`` is a view depends on the frame's blocks, which loading does not keep."""
    code = "%%step split\nimport pandas as pd\ndf = pd.DataFrame(df.to_numpy(float), columns=df.columns)\nX = df.iloc[:, :-1]\n"
    first, second = restart_all(ip, capsys, [LOAD, code])
    assert "split: cannot be reused next time ('X' and 'df' share memory" in first, first
    assert "split: reused" not in second and _shares(ip, "X"), second


LOOPS = {
    "for": "%%step train\nlosses = []\nfor epoch in range(5):\n    losses.append(1.0 / (epoch + 1))\n",
    "range_of_a_value": "%%step train\nlosses = []\nfor epoch in range(EPOCHS):\n    losses.append(1.0 / (epoch + 1))\n",
    "enumerate": "%%step train\nlosses = []\nfor epoch, b in enumerate(BATCHES):\n    losses.append(1.0 / b)\n",
    "try": "%%step train\ntry:\n    import json as codec\nexcept ImportError:\n    codec = None\nlosses = [1.0]\n",
}


@pytest.mark.parametrize("case", list(LOOPS))
def test_an_edited_cell_with_a_loop_or_a_try_run_again_stays_reusable(ip, capsys, case):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "EPOCHS = 5\nBATCHES = [1, 2]\n")
    base = set(ip.user_ns)
    cell = LOOPS[case]
    edited = cell.replace("1.0", "2.0")
    run_ok(ip, cell)
    run_ok(ip, edited)  # the same names end on the same objects (a small int, a module)
    out = capsys.readouterr().out
    assert "cannot be reused" not in out, out
    for name in set(ip.user_ns) - base:
        ip.user_ns.pop(name)
    run_ok(ip, edited)
    assert "train: reused" in capsys.readouterr().out
    assert ip.user_ns["losses"][0] == 2.0


def test_a_loop_that_may_not_run_still_leaves_its_target_to_the_check(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "n = 0\nepoch = 7\n")
    run_ok(ip, "%%step train\nlosses = []\nfor epoch in range(n):\n    losses.append(epoch)\n")
    assert "it assigns 'epoch' on some paths only" in capsys.readouterr().out


def test_an_object_column_holding_a_shared_list_is_still_found():
    import pandas as pd

    from nbmagic.run.reuse_kernel import shared_elsewhere
    from nbmagic.run.reuse_links import links

    row = [1, 2]
    frame = pd.DataFrame({"s": ["a"] * 999 + [row], "t": ["x"] * 1000})
    assert "'kept' and 'frame' hold a shared object" in (links({"frame": frame, "kept": row}, {})[0] or "")
    assert "reached from 'kept'" in (shared_elsewhere(["frame"], {"frame": frame, "kept": row}, {"frame"}) or "")
    strings = pd.DataFrame({"s": ["a", "b"] * 500})
    assert links({"strings": strings, "other": ["a"]}, {})[0] is None


@pytest.mark.parametrize("change", ["Cfg.lr = 0.5\n", "Cfg.items.append(1)\n", "del Cfg.lr\n"])
def test_a_step_changing_a_notebook_class_runs_again(ip, capsys, change):
    cells = ["class Cfg:\n    lr = 0.1\n    items = []\n", "%%step s\n" + change + "n = len(Cfg.items)\n"]
    first, second = restart_all(ip, capsys, cells)
    assert "s: cannot be reused next time (it changes class 'Cfg'; a reuse would not)" in first, first
    assert "s: reused" not in second
    assert (getattr(ip.user_ns["Cfg"], "lr", None), ip.user_ns["Cfg"].items) == {
        "Cfg.lr = 0.5\n": (0.5, []),
        "Cfg.items.append(1)\n": (0.1, [1]),
        "del Cfg.lr\n": (None, []),
    }[change]


@pytest.mark.parametrize("base", ["", "(__import__('abc').ABC)"])
def test_a_step_reading_a_notebook_class_is_reused(ip, capsys, base):
    cls = f"class Cfg{base}:\n    lr = 0.1\n    lock = __import__('threading').Lock()\n"
    cells = [cls + "    def scaled(self):\n        return self.lr * 2\n", "%%step s\nn = Cfg().scaled()\n"]
    first, second = restart_all(ip, capsys, cells)
    assert "s: reused" in second and ip.user_ns["n"] == 0.2, first + second


@pytest.mark.parametrize(
    "code",
    ["exec('del tmp\\ntmp = [9]')\ny = 1\n", "globals()['tmp'] = [9]\ny = 1\n", "vars().update(tmp=[9])\ny = 1\n"],
)
def test_a_step_binding_names_through_exec_or_globals_runs_again(ip, capsys, code):
    first, second = restart_all(ip, capsys, ["tmp = [1, 2]\n", "%%step s\n" + code])
    assert "s: cannot be reused next time (it " in first, first
    assert "s: reused" not in second and ip.user_ns["tmp"] == [9]


def test_a_step_reading_globals_is_reused(ip, capsys):
    first, second = restart_all(ip, capsys, ["tmp = [1, 2]\n", "%%step s\ny = len(globals().get('tmp', []))\n"])
    assert "s: reused" in second and ip.user_ns["y"] == 2, first + second


@pytest.mark.parametrize(
    "index", ["pd.date_range('2024-01-01', periods=30, freq='D')", "pd.timedelta_range(0, periods=30, freq='h')"]
)
def test_a_frame_whose_index_has_a_freq_is_reused_with_it(ip, capsys, index):
    cell = (
        "%%step s\nimport pandas as pd, numpy as np\n"
        f"ts = pd.Series(np.arange(30.0), index={index}, name='y')\nframe = ts.to_frame()\n"
    )
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    want = ip.user_ns["ts"].index.freq, ip.user_ns["frame"].index.freq
    first, second = restart_all(ip, capsys, [cell])
    assert "s: reused" in second, first + second
    assert (ip.user_ns["ts"].index.freq, ip.user_ns["frame"].index.freq) == want and want[0] is not None


def test_a_frame_of_a_million_strings_is_walked_not_given_up_on():
    import numpy as np
    import pandas as pd

    from nbmagic.run.reuse_links import links

    words = np.array(["alpha", "beta", "gamma"], dtype=object)
    big = pd.DataFrame({"s": np.tile(words, 400_000), "t": np.repeat(words, 400_000), "f": np.zeros(1_200_000)})
    assert links({"big": big}, {}) == (None, {})
    big.iloc[7, 0] = kept = [1]
    assert links({"big": big, "kept": kept}, {})[0] is not None  # shared, or too much to walk: never reused


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("make", "change", "check"),
    [
        ("df = pd.DataFrame({'a': [1.0, 2.0], 'b': [3.0, 4.0]})\ns = df['a']", "s.iloc[0] = 9", "df.iloc[0, 0] == 9"),
        (
            "df = pd.DataFrame({'c': pd.Categorical(['a', 'b'])})\ns = df['c']",
            "s.iloc[0] = 'b'",
            "df['c'].iloc[0] == 'b'",
        ),
    ],
    ids=["column-of-single-block-frame", "categorical"],
)
def test_a_column_beside_its_frame_in_one_step_is_reused_as_its_column(ip, capsys, make, change, check):
    first, second = restart_all(ip, capsys, ["%%step s\nimport pandas as pd\n" + make + "\n"])
    assert "s: reused" in second, first + second
    run_ok(ip, change)
    run_ok(ip, f"ok_ = bool({check})")
    assert ip.user_ns.pop("ok_")


def test_a_loop_over_a_value_emptied_through_another_name_leaves_its_target_to_the_check(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "batches = [1, 2]\nb = 7\n")
    run_ok(ip, "%%step train\nalias = batches\nalias.clear()\nfor b in batches:\n    pass\n")
    assert "it assigns 'b' on some paths only" in capsys.readouterr().out
