"""nbmagic: mark notebook cells as Kubeflow pipeline steps, run them locally or on a cluster, tune and serve.

``%load_ext nbmagic`` registers the magics; nothing heavy is imported here.
"""

from __future__ import annotations

from typing import Any

from .config import VERSION as __version__

__all__ = ["Pruned", "__version__", "load_ipython_extension", "report", "unload_ipython_extension"]


def __getattr__(name: str) -> Any:
    """``from nbmagic import report, Pruned`` in a step (imported on first use, from the step runtime)."""
    if name in ("report", "Pruned"):
        from .runtime import report as reporting

        return getattr(reporting, name)
    raise AttributeError(f"module 'nbmagic' has no attribute {name!r}")


def _magic_classes() -> list[type]:
    from .magics.pipeline import PipelineMagics

    classes: list[type] = [PipelineMagics]
    for module, name in (
        ("nbmagic.magics.state_magics", "StateMagics"),
        ("nbmagic.magics.tune", "TuneMagics"),
        ("nbmagic.magics.serve", "ServeMagics"),
    ):
        try:
            imported = __import__(module, fromlist=[name])
        except ImportError as exc:
            if exc.name != module:
                raise
            continue
        classes.append(getattr(imported, name))
    return classes


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbmagic``: register the magics and the hooks that record cells as they run."""
    from .magics.state import kernel_state
    from .run.module_clock import install

    install()  # notes when modules are imported: reuse never files an edited module's results under stale code
    state = kernel_state(ipython)
    for cls in _magic_classes():
        ipython.register_magics(cls)
    for event, callback in (("pre_run_cell", state.pre_run_cell), ("post_run_cell", state.post_run_cell)):
        if callback not in ipython.events.callbacks[event]:
            ipython.events.register(event, callback)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbmagic``: remove the magics and hooks (what was recorded stays for a reload)."""
    from .magics.state import kernel_state

    state = kernel_state(ipython)
    for event, callback in (("pre_run_cell", state.pre_run_cell), ("post_run_cell", state.post_run_cell)):
        try:
            ipython.events.unregister(event, callback)
        except ValueError:
            pass
    for cls in _magic_classes():
        for kind, names in cls.magics.items():
            table = ipython.magics_manager.magics[kind]
            for name in names:
                table.pop(name, None)
        ipython.magics_manager.registry.pop(cls.__name__, None)
