"""When each module was last imported (or reloaded) in this process.

Reuse keys a step by its local modules' sources on disk, while the kernel runs the code it imported: a module
edited after its import would file the old code's results under the new code's key. A finder at the front of
``sys.meta_path`` that finds nothing notes when each module is looked for (every import and every reload asks
it), so reuse can tell; installed when the extension loads.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

_LOOKED_FOR: dict[str, float] = {}


class ModuleClock:
    """A meta path finder that finds nothing: it notes the time a module is looked for, just before it loads."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        _LOOKED_FOR[name] = time.time()


def install() -> None:
    """Put the clock first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(finder, ModuleClock) for finder in sys.meta_path):
        sys.meta_path.insert(0, ModuleClock())


def loaded_at(name: str) -> float:
    """When ``name`` (or, for a package, the earliest of it and its loaded submodules) was last loaded.

    A module loaded before the clock was installed counts as loaded when the process started."""
    times = [t for module, t in _LOOKED_FOR.items() if module == name or module.startswith(name + ".")]
    return min(times) if times else process_started()


def process_started() -> float:
    """The process's start time (Linux: from ``/proc``); 0.0 when it cannot be read (nothing counts as sure)."""
    global _STARTED
    if _STARTED is None:
        try:
            with open("/proc/self/stat") as handle:
                ticks = int(handle.read().rpartition(")")[2].split()[19])
            with open("/proc/stat") as handle:
                boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
            _STARTED = boot + ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, StopIteration, IndexError):
            _STARTED = 0.0
    return _STARTED


_STARTED: float | None = None
