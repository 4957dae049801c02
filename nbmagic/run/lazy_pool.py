"""The step worker, started (and warmed with the plan's imports) only when a step actually has to run.

A run whose steps all come from the cache then costs no worker start and no imports.
"""

from __future__ import annotations

from typing import Any


class LazyPool:
    """Stands in for :func:`nbmagic.run.pool.worker_pool` until the first task is submitted."""

    def __init__(self, modules: list[str]) -> None:
        self._modules = modules
        self._pool: Any = None

    def _get(self) -> Any:
        if self._pool is None:
            from .pool import worker_pool

            pool = worker_pool()
            if self._modules:
                pool.preload(self._modules)
            self._pool = pool
        return self._pool

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        return self._get().submit(*args, **kwargs)

    def kill(self, *args: Any, **kwargs: Any) -> Any:
        return None if self._pool is None else self._pool.kill(*args, **kwargs)
