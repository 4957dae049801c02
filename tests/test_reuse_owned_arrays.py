"""A reused array is an ordinary array, as running the cell gives: it owns its memory, resizes, pickles."""

from __future__ import annotations

import pickle

import numpy as np

from helpers.shell import run_ok

CELL = "%%step s\nimport numpy as np\nX = np.zeros(300_000)\nY = X\nS = np.arange(10)\n"  # X: 2.4 MB


def _reuse(ip, capsys):
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, CELL)
    for name in ("X", "Y", "S"):
        ip.user_ns.pop(name)
    capsys.readouterr()
    run_ok(ip, CELL)
    assert "s: reused from run" in capsys.readouterr().out


def test_a_reused_large_array_owns_its_memory_and_resizes(ip, capsys):
    _reuse(ip, capsys)
    X = ip.user_ns["X"]
    assert X.flags.owndata and X.base is None and X.flags.writeable
    assert ip.user_ns["Y"] is X  # two names for one array stay one array
    del X
    run_ok(ip, "del Y\nX.resize(10)")
    assert ip.user_ns["X"].shape == (10,)
    assert np.resize(ip.user_ns["S"], 20).shape == (20,)
    assert np.array_equal(pickle.loads(pickle.dumps(ip.user_ns["X"])), np.zeros(10))


def test_writing_into_a_reused_array_leaves_the_stored_value_alone(ip, capsys):
    _reuse(ip, capsys)
    run_ok(ip, "X[:] = 7.0")
    for name in ("X", "Y", "S"):
        ip.user_ns.pop(name)
    run_ok(ip, CELL)
    assert not ip.user_ns["X"].any()


def test_an_array_of_64_mib_or_more_is_mapped_as_the_help_says(ip, capsys):
    cell = "%%step big\nimport numpy as np\nB = np.ones(8 << 20)\n"  # 64 MiB
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, cell)
    ip.user_ns.pop("B")
    capsys.readouterr()
    run_ok(ip, cell)
    assert "big: reused from run" in capsys.readouterr().out
    B = ip.user_ns["B"]
    assert not B.flags.owndata and B.flags.writeable
    B[0] = 5.0  # copy-on-write: the kernel's array changes, the stored one does not
    assert np.resize(B, 3).tolist() == [5.0, 1.0, 1.0]
    ip.run_cell("%%step?")
    assert "One of 64 MiB or more is mapped copy-on-write from the store" in " ".join(capsys.readouterr().out.split())
