"""A kernel's results computed with a carried value that holds a secret are kept under no key of the kernel's
own: such a key (made from the value's fingerprint) would name a shared cache entry."""

from __future__ import annotations

from helpers.shell import run_ok
from nbmagic.store.runs import RunStore


def test_results_computed_with_a_carried_secret_are_not_cached_under_a_kernel_key(
    ip, nbmagic_home, monkeypatch, capsys
):
    monkeypatch.setenv("API_TOKEN", "tok-77aa99bb11")
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(ip, "import os\ncreds = {}")
    cell = "%%step b --secret creds:token=API_TOKEN\nsize = len(creds)\n"
    run_ok(ip, cell)
    run_ok(ip, "creds['token'] = os.environ['API_TOKEN']")  # a later cell: not what the cells before b give
    capsys.readouterr()
    run_ok(ip, cell)  # run again: computed with the kernel's own value of creds
    assert ip.user_ns["size"] == 1
    out = capsys.readouterr().out
    assert "b: cannot be reused next time (the value it carries in 'creds' holds a secret)" in out, out
    rows = RunStore(nbmagic_home / "store")._connection().execute("SELECT carried FROM cache WHERE step='b'").fetchall()
    assert len(rows) == 1, rows  # the first run's entry (creds = {}), none for the kernel's secret-holding value
