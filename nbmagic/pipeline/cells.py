"""Read notebook cells (from the kernel or the file) into steps, parameters, metrics and notebook code."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from typing import Any

from .. import arguments
from ..errors import NbMagicError, PipelineError
from .analysis import parse, to_python
from .model import PARAMETER_TYPES, Cell, Parameter, Step, check_name
from .settings import SETTING_ARGUMENTS, STORE_ARGUMENTS, StepSettings, settings_from_args

STEP_MAGIC = "step"
CONFIG_MAGIC = "pipeline_config"
PARAMETERS_MAGIC = "pipeline_parameters"
METRICS_MAGIC = "pipeline_metrics"

STEP_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("name",), {"help": "the step's name: letters, digits and _"}),
    (
        ("--after",),
        {
            "nargs": "+",
            "default": [],
            "metavar": "STEP",
            "help": "steps this one runs after, besides those inferred from data",
        },
    ),
]


@functools.cache
def _parser(prog: str) -> Any:
    """The parser of a pipeline magic's line, built on first use (the same specs as the magic's ``?`` help)."""
    specs = {
        "%%step": STEP_ARGUMENTS + SETTING_ARGUMENTS,
        "%pipeline_config": SETTING_ARGUMENTS + STORE_ARGUMENTS,
        "%pipeline_metrics": [(("names",), {"nargs": "*"})],
    }[prog]
    return arguments.build_parser(prog, specs)


def parse_step_line(line: str, defaults: StepSettings | None = None) -> tuple[str, tuple[str, ...], StepSettings]:
    """``NAME [--after A B] [settings]`` -> (name, after, settings); errors name the option."""
    try:
        namespace = arguments.parse(_parser("%%step"), line)
    except NbMagicError as exc:
        raise PipelineError(f"%%step {line.strip()}: {str(exc).removeprefix('%%step: ')}") from None
    name = check_name(namespace.name, "step")
    after = tuple(dict.fromkeys(check_name(a, "step") for a in namespace.after))
    if name in after:
        raise PipelineError(f"step {name!r} cannot run --after itself")
    try:
        return name, after, settings_from_args(namespace, defaults)
    except NbMagicError as exc:
        raise PipelineError(f"%%step {name}: {exc}") from None


def parse_parameters(code: str, where: str, first_line: int = 2) -> dict[str, Parameter]:
    """A ``%%pipeline_parameters`` body: only ``name = literal`` lines (int, float, str, bool).

    ``first_line`` is the cell line the body starts on (after the magic line), so errors name the cell's line.
    """
    tree = parse(code, where)
    found: dict[str, Parameter] = {}
    for statement in tree.body:
        statement.lineno += first_line - 1
        if (
            isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            continue  # a docstring-like comment
        target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
        if isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target = statement.target
        value_node = getattr(statement, "value", None)
        if not isinstance(target, ast.Name) or value_node is None:
            raise PipelineError(
                f"{where}, line {statement.lineno}: only `name = value` assignments of int, float, str or bool belong in %%pipeline_parameters"
            )
        try:
            value = ast.literal_eval(value_node)
        except ValueError:
            raise PipelineError(
                f"{where}, line {statement.lineno}: parameter {target.id!r} must be a literal int, float, str or bool, not `{ast.unparse(value_node)}`"
            ) from None
        kind = PARAMETER_TYPES.get(type(value))
        if kind is None:
            raise PipelineError(
                f"{where}, line {statement.lineno}: parameter {target.id!r} is a {type(value).__name__}; parameters are int, float, str or bool"
            )
        name = check_name(target.id, "parameter")
        if not name[0].isalpha():  # KFP's rule for input names: a dunder would be refused only at compile
            raise PipelineError(
                f"{where}, line {statement.lineno}: parameter {name!r} must start with a letter "
                "(pipeline inputs cannot start with _)"
            )
        if name in found:
            raise PipelineError(f"{where}, line {statement.lineno}: parameter {name!r} is declared twice; keep one")
        found[name] = Parameter(name, value, kind)
    return found


def parse_metrics_line(line: str) -> list[str]:
    """``%pipeline_metrics`` arguments -> the metric names (at least one)."""
    try:
        names = arguments.parse(_parser("%pipeline_metrics"), line).names
    except NbMagicError as exc:
        raise PipelineError(str(exc)) from None
    if not names:
        raise PipelineError("%pipeline_metrics needs at least one variable name")
    return [check_name(n, "metric") for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class RawCell:
    """A code cell's full source as the user wrote it, with where it came from."""

    source: str
    index: int
    label: str
    cell_id: str | None = None


@dataclass
class Notebook:
    """What a sequence of cells declares."""

    steps: list[Step] = field(default_factory=list)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    code: list[Cell] = field(default_factory=list)  # ordinary cells (imports, functions, classes)
    parameter_cells: list[Cell] = field(default_factory=list)
    defaults: StepSettings = field(default_factory=StepSettings)  # from the last %pipeline_config line
    warnings: list[str] = field(default_factory=list)  # one line each, shown where the plan is built


def cell_magic(source: str) -> tuple[str, str, str] | None:
    """``%%name line\\nbody`` -> (name, line, body); None for a cell without a cell magic."""
    stripped = source.lstrip()
    if not stripped.startswith("%%"):
        return None
    first, _, body = stripped.partition("\n")
    name, _, line = first[2:].partition(" ")
    return name.strip(), line.strip(), body


def step_name(source: str) -> str | None:
    """The name a ``%%step`` cell gives its step ("" when it gives none); None for any other cell."""
    magic = cell_magic(source)
    if not magic or magic[0] != STEP_MAGIC:
        return None
    try:
        words = arguments.split(magic[1])
    except NbMagicError:
        return ""
    return words[0] if words else ""


def _metrics_lines(code: str) -> list[str]:
    """Metric names from ``%pipeline_metrics`` lines anywhere in an ordinary cell."""
    return [name for line in arguments.magic_lines(METRICS_MAGIC, code) for name in parse_metrics_line(line)]


def parse_config_line(line: str, where: str = "%pipeline_config") -> StepSettings:
    """The settings of a ``%pipeline_config`` line (without the magic); errors name the option."""
    try:
        namespace = arguments.parse(_parser("%pipeline_config"), line)
        return settings_from_args(namespace, None)
    except (NbMagicError, ValueError) as exc:
        raise PipelineError(f"{where}: {str(exc).removeprefix('%pipeline_config: ')}") from None


def _only_comments(body: str) -> bool:
    return all(not line.strip() or line.strip().startswith("#") for line in body.splitlines())


def _continue_step(
    notebook: Notebook, position: int, raw: RawCell, body: str, after: tuple[str, ...], settings
) -> None:
    """A second cell with a step's name continues that step (its code runs after the earlier cells')."""
    step = notebook.steps[position]
    if settings != StepSettings() and settings != step.settings:
        raise PipelineError(
            f"step {step.name!r}: settings go on its first cell ({step.cell.label.split(' (step')[0]}), not on {raw.label}"
        )
    code = step.cell.code.rstrip("\n") + "\n" + to_python(body)
    cell = Cell(
        source=step.cell.source.rstrip("\n") + "\n" + body,
        code=code,
        index=step.cell.index,
        label=step.cell.label.replace(" (step", f" + {raw.label} (step", 1),
        cell_id=step.cell.cell_id,
    )
    notebook.steps[position] = Step(step.name, cell, tuple(dict.fromkeys(step.after + after)), step.settings)


def read_cells(cells: list[RawCell]) -> Notebook:
    """Sort cells into steps, parameters, metrics, pipeline-wide settings and notebook code; errors name the cell.

    Cells with the same step name form one step, in notebook order (a continuation)."""
    notebook = Notebook()
    seen: dict[str, int] = {}
    declared: dict[str, tuple[str, str]] = {}  # parameter -> (cell label, type)
    for raw in cells:
        magic = cell_magic(raw.source)
        if magic and magic[0] == STEP_MAGIC:
            _, line, body = magic
            name, after, settings = parse_step_line(line)
            if _only_comments(body):
                notebook.warnings.append(f"step {name!r} ({raw.label}) holds only comments")
            if name in seen:
                _continue_step(notebook, seen[name], raw, body, after, settings)
                continue
            seen[name] = len(notebook.steps)
            cell = Cell(
                source=body,
                code=to_python(body),
                index=raw.index,
                label=f"{raw.label} (step {name})",
                cell_id=raw.cell_id,
            )
            notebook.steps.append(Step(name=name, cell=cell, after=after, settings=settings))
        elif magic and magic[0] == PARAMETERS_MAGIC:
            body = magic[2]
            found = parse_parameters(to_python(body), raw.label)
            for pname, parameter in found.items():
                if pname in declared:
                    other, kind = declared[pname]
                    what = "twice" if kind == parameter.type else f"twice, as {kind} and {parameter.type}"
                    raise PipelineError(f"parameter {pname!r} is declared {what} ({other} and {raw.label}); keep one")
                declared[pname] = (raw.label, parameter.type)
            notebook.parameters.update(found)
            notebook.parameter_cells.append(Cell(body, to_python(body), raw.index, raw.label, raw.cell_id))
        elif magic:
            continue  # another cell magic (%%bash, %%html …): not Python the steps can use
        else:
            for config in arguments.magic_lines(CONFIG_MAGIC, raw.source):
                notebook.defaults = parse_config_line(config, f"{raw.label}: %pipeline_config")
            for metric in _metrics_lines(raw.source):
                if metric not in notebook.metrics:
                    notebook.metrics.append(metric)
            notebook.code.append(Cell(raw.source, to_python(raw.source), raw.index, raw.label, raw.cell_id))
    return notebook
