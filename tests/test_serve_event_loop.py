"""The model server runs on uvloop where it is installed (forked by the warm process or started on its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# predict runs in a worker thread: it finds the server's running loop among the process's objects
LOOPMOD = """
import asyncio, gc

class Model:
    def predict(self, x):
        running = {f"{type(o).__module__}.{type(o).__name__}" for o in gc.get_objects()
                   if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()}
        return [",".join(sorted(running))] * len(x)
"""
SERVE = """
from nbmagic.serve.api import serve
import loopmod

server = serve(loopmod.Model(), name="loop")
try:
    print(server.predict([[1]])[0], flush=True)
finally:
    server.stop()
"""


@pytest.mark.parametrize("warm", ["1", "0"])
def test_server_event_loop_is_uvloop_when_installed(tmp_path, warm):
    pytest.importorskip("uvloop")
    (tmp_path / "loopmod.py").write_text(LOOPMOD)
    env = dict(
        os.environ,
        NBMAGIC_HOME=str(tmp_path / "home"),
        NBMAGIC_SERVE_WARM=warm,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
    )
    done = subprocess.run(
        [sys.executable, "-c", SERVE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["uvloop.Loop"]
