"""``%%step?`` tells the reuse rules: what reuse skips, carried values, ``--inputs``."""

from __future__ import annotations

import re


def test_step_help_describes_what_reuse_skips_carried_values_and_inputs(ip, capsys):
    ip.run_cell("%%step?")
    text = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    flat = " ".join(text.split())
    assert "%%step [--after STEP" in flat and "[--reuse] [--no-reuse] [--inputs PATH [PATH ...]]" in flat
    assert (
        "What reuse skips: the cell's side effects. Prints are replayed; files it writes and plots it draws are not made again"
        in flat
    )
    assert "``--inputs data/raw.csv`` (its content hash joins the key" in flat
    assert "Carried values: values from ordinary cells the step uses" in flat
    assert "a cell whose kernel holds other values than its stored results were computed with runs instead" in flat
    assert "``--secret-file`` contents are never stored" in flat
    # the options' own lines come from the same argument parser
    assert "--inputs PATH [PATH ...]" in flat and "their content hash joins the cache key" in flat
    assert "prints replayed; files and plots not made again" in flat


def test_step_help_tells_that_overlapping_memory_makes_the_cell_run(ip, capsys):
    ip.run_cell("%%step?")
    flat = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out).split())
    assert "values whose memory overlaps, compared by the byte ranges of numpy arrays, pandas blocks" in flat
    assert (
        "subclasses of ``str``/``int``/``tuple``... with attributes (or defined in the notebook) like any object"
        in flat
    )
