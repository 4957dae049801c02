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
    """True under a Jupyter kernel (rich displays), False in terminal IPython or scripts."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
