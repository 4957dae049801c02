"""Quantities typed by users: Kubernetes CPU and memory, store sizes, durations. Bad text is a ``ValueError``.

Sizes printed to users go through :func:`format_size`.

Callers turn the ``ValueError`` into their own one-line error naming the option.
"""

from __future__ import annotations

import re
from decimal import Decimal

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgtpe])(i?))?b?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``1.5``, ``2Gi``, ``500M``) as a number (Kubernetes' own parser)."""
    from kubernetes.utils.quantity import parse_quantity

    return parse_quantity(str(text).strip())


def memory_bytes(text: str) -> int:
    """``2Gi`` -> 2147483648, ``500M`` -> 500000000, ``1024`` -> 1024."""
    value = quantity(text)
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def cpu_millis(text: str) -> float:
    """``500m`` -> 500, ``1.5`` -> 1500."""
    return float(quantity(text) * 1000)


def size_bytes(text: str | int) -> int:
    """A store size: ``500MB``, ``5GB``, ``1.5GiB``, ``2g``, ``1000`` -> bytes (letters in any case)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text).strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a size")
    number, prefix, binary = match.groups()
    if not prefix:
        return int(float(number))
    unit = ("k" if prefix == "k" and not binary else prefix.upper()) + binary
    return int(quantity(number + unit))


def duration_seconds(text: str | float) -> float:
    """``90``, ``30s``, ``15m``, ``15min``, ``1h30m``, ``2d``, ``1w``, ``500ms`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    parts = _DURATION_PART.findall(value)
    if not parts or _DURATION_PART.sub("", value).strip():
        raise ValueError(f"{text!r} is not a duration")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


def format_size(size: int | None) -> str:
    """Bytes for a person, in decimal units: ``512 B``, ``312.4 kB``, ``1.2 MB`` (``? B`` when unknown)."""
    if size is None:
        return "? B"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
