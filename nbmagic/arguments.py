"""One way to read a magic's argument line, typed in a cell or re-read from a notebook file.

A tokenizer drops a trailing ``# comment`` and resolves shell quoting once; IPython's ``MagicArgumentParser``
(the parser behind ``%magic?`` help) parses the words. Errors are one :class:`ArgumentError` line.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from .errors import NbMagicError

Spec = tuple[tuple[str, ...], dict[str, Any]]

_DASH_VALUE = re.compile(r"^-[A-Za-z_]")  # `--sort -val_loss`: a value, not an option, when no option is named so


class ArgumentError(NbMagicError):
    """A magic's argument line that cannot be read (bad quoting, unknown option, missing value)."""


def strip_comment(line: str) -> str:
    """``--param C=3  # try a larger C`` -> ``--param C=3``; a ``#`` inside quotes or a word is kept."""
    quote: str | None = None
    previous = " "
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and previous.isspace():
            return line[:index].rstrip()
        previous = char
    return line


def split(line: str, where: str = "") -> list[str]:
    """The words of an argument line: comment dropped, quotes resolved (``"a b"`` is one word ``a b``)."""
    try:
        return shlex.split(strip_comment(line), posix=True)
    except ValueError as exc:
        raise ArgumentError(f"{where + ': ' if where else ''}{line.strip()}: {exc}") from None


def build_parser(prog: str, specs: Sequence[Spec]) -> argparse.ArgumentParser:
    """IPython's ``MagicArgumentParser`` with ``specs`` (``(names, options)`` pairs) as its arguments."""
    from IPython.core.magic_arguments import MagicArgumentParser

    parser = MagicArgumentParser(prog=prog)
    for names, options in specs:
        parser.add_argument(*names, **options)
    return parser


def parse(parser: argparse.ArgumentParser | Callable[..., Any], line: str) -> argparse.Namespace:
    """Parse ``line`` with ``parser`` (or a ``@magic_arguments`` function's parser); one-line error."""
    found = getattr(parser, "parser", parser)
    if not isinstance(found, argparse.ArgumentParser):
        raise TypeError(f"{parser!r} has no argument parser")
    words = attach_dash_values(found, split(line, found.prog))
    from IPython.core.error import UsageError

    try:
        return found.parse_args(words)
    except UsageError as exc:
        prog = found.prog if found.prog.startswith("%") else f"%{found.prog}"
        raise ArgumentError(f"{prog}: {exc}") from None


def attach_dash_values(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """``--sort -val_loss`` -> ``--sort=-val_loss`` when ``-val_loss`` names none of the parser's options."""
    known = parser._option_string_actions  # argparse keeps no public map from option string to action
    out: list[str] = []
    for word in words:
        action = known.get(out[-1]) if out else None
        if (
            action is not None
            and action.nargs is None
            and action.option_strings
            and _DASH_VALUE.match(word)
            and word.split("=", 1)[0] not in known
        ):
            out[-1] = f"{out[-1]}={word}"
            continue
        out.append(word)
    return out


def magic_lines(name: str, source: str) -> list[str]:
    """The argument lines of every ``%name`` line magic call in a cell's ``source`` (one per line)."""
    prefix = "%" + name
    found: list[str] = []
    for raw in source.splitlines():
        text = raw.strip()
        if text == prefix or text.startswith((prefix + " ", prefix + "\t")):
            found.append(text[len(prefix) :])
    return found
