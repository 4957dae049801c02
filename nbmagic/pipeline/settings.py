"""Per-step settings: caching, image, packages, and what a cluster step needs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepSettings:
    """How a step runs; pipeline-wide defaults use the same type."""

    cache: bool = True
    image: str | None = None
    packages: tuple[str, ...] = ()
