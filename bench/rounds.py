"""What the side-by-side benchmarks share: rounds that alternate which side goes first, and the report's end."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Row = tuple[Any, tuple[Any, ...], dict[Any, Any], tuple[float, float, float]]


def alternate(
    rounds: Iterable[Any],
    sides: tuple[Any, Any],
    measure: Callable[[Any, Any], Any],
    describe: Callable[[Any, tuple[Any, ...], dict[Any, Any]], str],
) -> list[Row]:
    """Measure both sides each round, the first side alternating; a row per round: (round, order, figures by
    side, load average after), and a line per round printed as it ends."""
    rows: list[Row] = []
    for number, key in enumerate(rounds):
        order = sides if number % 2 == 0 else sides[::-1]
        got = {side: measure(key, side) for side in order}
        rows.append((key, order, got, os.getloadavg()))
        print(describe(key, order, got), flush=True)
    return rows


def machine() -> str:
    """The report's line about the machine the figures were measured on."""
    return (
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "shared with other jobs."
    )


def finish(lines: list[str], out: str | None) -> None:
    """Print the report and write it to ``out`` (when given)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
