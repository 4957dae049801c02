"""Python literals for generated code: readable (multi-line strings stay multi-line) and checked by round trip."""

from __future__ import annotations

import ast
from typing import Any


def _triple_quoted(text: str) -> str | None:
    """``text`` as a ''' string literal, or None when it holds characters that would need escapes."""
    if any((not c.isprintable() and c not in "\n\t") for c in text):
        return None
    body = text.replace("\\", "\\\\")
    # a quote that starts a run of quotes or ends the text would close the literal: escape every such quote
    escaped = []
    for i, char in enumerate(body):
        if char == "'" and (i + 1 == len(body) or body[i + 1] == "'" or (i and body[i - 1] == "'")):
            escaped.append("\\'")
        else:
            escaped.append(char)
    return "'''" + "".join(escaped) + "'''"


def literal(value: Any) -> str:
    """Source text that evaluates to ``value`` (str, int, float, bool, None, and lists/tuples/dicts of them)."""
    if isinstance(value, str):
        text = _triple_quoted(value) if "\n" in value else None
        if text is None:
            return repr(value)  # a str's repr always reads back as itself: nothing to check
    elif isinstance(value, (bool, int)) or value is None:
        return repr(value)
    elif isinstance(value, float):
        text = repr(value)
    # containers: each item is checked as it is written, and the brackets cannot change what the items mean
    elif isinstance(value, tuple):
        items = [literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    elif isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    elif isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    else:
        raise TypeError(f"cannot write {type(value).__name__} as a literal")
    if ast.literal_eval(text) != value:  # never emit a literal that means something else
        text = repr(value)
        if ast.literal_eval(text) != value:
            raise ValueError(f"cannot write {value!r} as a literal")
    return text
