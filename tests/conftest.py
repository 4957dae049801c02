"""Shared fixtures: a private run store per test, and an IPython shell with nbmagic loaded."""

from __future__ import annotations

import pytest

pytest_plugins = ["helpers.browser", "helpers.s3", "helpers.gcs"]


@pytest.fixture(autouse=True)
def nbmagic_home(tmp_path_factory, monkeypatch):
    """Every test gets its own run store (``$NBMAGIC_HOME``)."""
    home = tmp_path_factory.mktemp("nbmagic-home")
    monkeypatch.setenv("NBMAGIC_HOME", str(home))
    return home


@pytest.fixture
def ip():
    """IPython's InteractiveShell with nbmagic loaded and nothing recorded yet."""
    from IPython.core.interactiveshell import InteractiveShell

    from nbmagic.magics.state import kernel_state

    shell = InteractiveShell.instance()
    shell.extension_manager.load_extension("nbmagic")
    state = kernel_state(shell)
    state.recorder.reset()
    state.notebook_override = None
    state.recorder.defaults = type(state.recorder.defaults)()
    for name in ("__session__", "__vsc_ipynb_file__"):
        shell.user_ns.pop(name, None)
    yield shell
    shell.extension_manager.unload_extension("nbmagic")
