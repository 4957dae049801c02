"""`jupyter console` shows only text/plain: nbmagic prints its progress lines there, as in a terminal."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

pytestmark = pytest.mark.slow
pexpect = pytest.importorskip("pexpect")
pytest.importorskip("jupyter_console")


def test_jupyter_console_sees_progress_lines_and_the_pipeline_as_text(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path)  # no notebook server knows this kernel
    jupyter = shutil.which("jupyter") or sys.executable
    args = ["console", "--kernel", "python3", "--simple-prompt"] if jupyter != sys.executable else []
    console = pexpect.spawn(jupyter, args, env=env, encoding="utf-8", timeout=120, cwd=str(tmp_path))
    try:
        prompt = r"In \[\d+\]: "
        console.expect(prompt)
        for line in (
            "%load_ext nbmagic",
            "get_ipython().run_cell_magic('step', 'load', 'x = [1, 2, 3]')",
            "get_ipython().run_cell_magic('step', 'total', 's = sum(x)')",
        ):
            console.sendline(line)
            console.expect(prompt)
        console.sendline("%pipeline")
        console.expect(prompt)
        assert "load -> total: x" in console.before, console.before
        console.sendline("run = %compile_run")
        console.expect(prompt)
        shown = console.before
        assert "] load: done" in shown and "] total: done" in shown, shown
        assert "IPython.core.display.HTML object" not in shown
    finally:
        console.sendline("exit")
        console.expect(pexpect.EOF)
