"""Helpers every Magics class shares: library errors as UsageErrors, argument specs as magic_arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..errors import NbMagicError


def usage_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn nbmagic's errors into IPython's one-line UsageError."""

    @functools.wraps(func)
    def wrapper(self: Any, line: str = "", *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, line, *args, **kwargs)
        except NbMagicError as exc:
            raise UsageError(str(exc)) from None

    return wrapper


def arguments(
    specs: list[tuple[tuple[str, ...], dict[str, Any]]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Apply a list of ``(args, kwargs)`` argument specs as IPython ``@argument`` decorators, in order."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for args, kwargs in reversed(specs):
            func = argument(*args, **kwargs)(func)
        return func

    return decorate


def in_notebook() -> bool:
    """True where rich displays are seen (JupyterLab, Notebook, VS Code, nbclient/papermill); False in terminal
    IPython and scripts, and for Jupyter kernels driven by a text-only front end (``jupyter console``, qtconsole)."""
    shell = _kernel_shell()
    if shell is None:
        return False
    return not text_only_front_end(shell)


def _kernel_shell() -> Any:
    """The IPython shell of a Jupyter kernel this runs in, else None (terminal IPython, a script, no IPython)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return None
    return shell if shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell" else None


def text_only_front_end(shell: Any) -> bool:
    """A kernel's front end shows only text when its requests carry no notebook cell id, it is not a headless
    notebook run (those send ``allow_stdin`` false), and no notebook file or Jupyter server session names it."""
    import os

    request = _current_request(shell)
    if (request.get("metadata") or {}).get("cellId"):
        return False  # JupyterLab, Notebook 7, VS Code
    if (request.get("content") or {}).get("allow_stdin") is False:
        return False  # nbclient, nbconvert --execute, papermill: outputs are saved in a notebook
    if os.environ.get("JPY_SESSION_NAME") or shell.user_ns.get("__vsc_ipynb_file__"):
        return False
    return not _server_knows_kernel()


def headless() -> bool:
    """A notebook run by nbclient (``nbconvert --execute``, papermill): nobody clicks, and the kernel stops after
    the last cell, so work started in the background must be waited for."""
    shell = _kernel_shell()
    if shell is None:
        return False
    return (_current_request(shell).get("content") or {}).get("allow_stdin") is False


def _current_request(shell: Any) -> dict[str, Any]:
    kernel = getattr(shell, "kernel", None)
    try:
        request = kernel.get_parent("shell") if kernel is not None else None
    except Exception:  # older ipykernel
        request = None
    request = request or getattr(shell, "parent_header", None) or {}
    return request if isinstance(request, dict) else {}


@functools.lru_cache(maxsize=1)
def _server_knows_kernel() -> bool:
    """Whether a running Jupyter server has a notebook session on this kernel (classic Notebook 6 says nothing)."""
    from ..pipeline.notebook import find_through_server, kernel_id

    return find_through_server(kernel_id()) is not None
