"""Where nbmagic keeps its files, read from the environment."""

from __future__ import annotations

import os
from pathlib import Path

VERSION = "0.1.0"  # nbmagic.__version__; names the cluster image
HOME_ENV = "NBMAGIC_HOME"


def home() -> Path:
    """The run store root: ``$NBMAGIC_HOME``, else ``~/.nbmagic``."""
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".nbmagic"
