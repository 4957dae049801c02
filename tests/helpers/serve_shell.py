"""An IPython shell with the %serve magics for the serve tests, in its own NBMAGIC_HOME."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from nbmagic.magics.serve import ServeMagics
from nbmagic.serve import local


@contextmanager
def serve_shell(home: Path, setup: str) -> Iterator[InteractiveShell]:
    """The shell with ``setup`` run in it and NBMAGIC_HOME=``home``; every local server is stopped on exit."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NBMAGIC_HOME", str(home))
        ip = InteractiveShell.instance()
        ip.register_magics(ServeMagics)
        ip.run_cell(setup, store_history=True).raise_error()
        try:
            yield ip
        finally:
            local.stop_all()
