"""The recorded pipeline as plain data: steps, parameters, metrics, and the resolved plan.

Nothing here imports IPython or kfp; a plan can be built and checked without a kernel.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import PipelineError
from .settings import StepSettings

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
PARAMETER_TYPES: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is usable as a step/parameter/metric name (a Python identifier)."""
    if not NAME_RE.match(name or "") or keyword.iskeyword(name):
        raise PipelineError(
            f"invalid {what} name {name!r}: use letters, digits and _ (not starting with a digit), at most 63 characters"
        )
    return name


@dataclass(frozen=True)
class Cell:
    """A piece of notebook source: where it comes from and its (IPython-transformed) Python code."""

    source: str  # raw cell source, magic line removed for %%step cells
    code: str  # pure Python after IPython's transformers
    index: int  # position in notebook order (execution order when no file is known)
    label: str  # shown in tracebacks, e.g. "quickstart.ipynb cell 4"
    cell_id: str | None = None


@dataclass(frozen=True)
class Step:
    """A ``%%step`` cell as recorded."""

    name: str
    cell: Cell
    after: tuple[str, ...] = ()
    settings: StepSettings = field(default_factory=StepSettings)


@dataclass(frozen=True)
class Parameter:
    name: str
    default: bool | int | float | str
    type: str  # "bool" | "int" | "float" | "str"

    def coerce(self, raw: Any) -> bool | int | float | str:
        """Turn an override (a string from the command line or a Python value) into this parameter's type."""
        value = raw
        if isinstance(raw, str) and self.type != "str":
            text = raw.strip()
            try:
                if self.type == "bool":
                    lowered = text.lower()
                    if lowered not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(text)
                    value = lowered in ("true", "1", "yes")
                elif self.type == "int":
                    value = int(text)
                else:
                    value = float(text)
            except ValueError:
                raise PipelineError(
                    f"parameter {self.name!r} is {self.type}; {raw!r} is not a valid {self.type}"
                ) from None
        ok = {
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "str": isinstance(value, str),
        }[self.type]
        if not ok:
            raise PipelineError(f"parameter {self.name!r} is {self.type}; got {type(value).__name__} {value!r}")
        return float(value) if self.type == "float" else value


@dataclass(frozen=True)
class StepPlan:
    """One step, resolved against the rest of the notebook: what it reads, from where, and what it writes."""

    name: str
    cell: Cell
    inputs: dict[str, str]  # variable -> name of the step that produces it
    parameters: tuple[str, ...]  # pipeline parameters the step reads
    writes: tuple[str, ...]  # every name the step assigns (kept as its state)
    outputs: tuple[str, ...]  # the writes later steps read or that are metrics
    metrics: tuple[str, ...]  # pipeline metrics this step produces
    prelude: str  # notebook code (imports, functions, classes) the step needs, in notebook order
    modules: tuple[str, ...]  # top-level modules the step and its prelude import
    upstream: tuple[str, ...]  # every step this one runs after (explicit and inferred)
    explicit_after: tuple[str, ...]
    settings: StepSettings = field(default_factory=StepSettings)
    # the prelude as (cell label, first line, source) pieces, so tracebacks point at notebook cells
    prelude_parts: tuple[tuple[str, int, str], ...] = ()
    # ordinary-cell statements carried into the step: (cell label, name), besides imports, functions and classes
    carried: tuple[tuple[str, str], ...] = ()
    # values the step changes in place that later steps read from it: (variable, cell line or 0)
    in_place: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    variables: tuple[str, ...]  # empty for an explicit --after edge that carries no data
    explicit: bool


@dataclass(frozen=True)
class PipelinePlan:
    """A validated pipeline, ready to compile or run. Steps are in a topological order that follows the notebook."""

    name: str
    steps: tuple[StepPlan, ...]
    parameters: dict[str, Parameter]
    metrics: tuple[str, ...]
    notebook: str | None = None
    image: str | None = None
    packages: tuple[str, ...] = ()
    defaults: StepSettings = field(default_factory=StepSettings)  # pipeline-wide settings (%pipeline_config)

    def step(self, name: str) -> StepPlan:
        for step in self.steps:
            if step.name == name:
                return step
        raise PipelineError(f"no step named {name!r} in pipeline {self.name!r}")

    @property
    def edges(self) -> list[Edge]:
        found: list[Edge] = []
        for step in self.steps:
            by_source: dict[str, list[str]] = {}
            for var, source in step.inputs.items():
                by_source.setdefault(source, []).append(var)
            for source in step.upstream:
                found.append(
                    Edge(source, step.name, tuple(sorted(by_source.get(source, []))), source in step.explicit_after)
                )
        return found

    def resolve_parameters(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults with overrides applied and type-checked; an unknown name is an error."""
        values = {name: p.default for name, p in self.parameters.items()}
        for name, raw in (overrides or {}).items():
            if name not in self.parameters:
                known = ", ".join(self.parameters) or "none recorded"
                raise PipelineError(f"unknown parameter {name!r} (parameters: {known})")
            values[name] = self.parameters[name].coerce(raw)
        return values

    def with_settings(self, name: str, settings: StepSettings) -> PipelinePlan:
        steps = tuple(replace(s, settings=settings) if s.name == name else s for s in self.steps)
        return replace(self, steps=steps)
