"""Resolve recorded cells into a validated PipelinePlan: data-flow edges, notebook code, order."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import PipelineError
from .analysis import BUILTINS, CodeInfo, analyze
from .cells import Notebook
from .learned import changed_in_place
from .model import PipelinePlan, StepPlan, check_name

# names IPython or the runtime provide inside a step
PROVIDED = frozenset({"get_ipython", "In", "Out", "exit", "quit"})


@dataclass
class _Definition:
    """An import, function, class or other top-level statement from an ordinary notebook cell."""

    name: str
    source: str
    label: str  # the cell it comes from
    line: int  # its first line in that cell
    order: int  # position of the definition within the notebook
    info: CodeInfo
    index: int = 0  # the cell's position in notebook order
    eager: bool = False  # a statement run as the prelude runs (its reads must exist then), not a def/class/import


_DEFINING = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _notebook_definitions(notebook: Notebook) -> dict[str, list[_Definition]]:
    """Name -> the ordinary-cell code that makes it: the latest import/def/class, or every top-level statement
    that binds (then changes) it, in notebook order."""
    found: dict[str, list[_Definition]] = {}
    order = 0
    for cell in notebook.code:
        try:
            tree = ast.parse(cell.code)
            info = analyze(cell.code, cell.label)
        except (PipelineError, SyntaxError):
            continue  # an ordinary cell with a syntax error cannot provide anything
        for statement in tree.body:
            order += 1
            if isinstance(statement, _DEFINING):
                for name, source in info.definitions.items():
                    if info.lines[name] == _first_line(statement):
                        found[name] = [
                            _Definition(name, source, cell.label, info.lines[name], order, analyze(source, cell.label))
                        ]
                continue
            source = ast.get_source_segment(cell.code, statement) or ast.unparse(statement)
            try:
                part = analyze(source, cell.label)
            except PipelineError:
                continue
            for name in part.writes:
                if name in part.mutated and not any(d.eager for d in found.get(name, ())):
                    continue  # changes a name no ordinary cell binds (a step's value): not carried
                definition = _Definition(
                    name, source, cell.label, statement.lineno, order, part, cell.index, eager=True
                )
                if name in part.mutated or any(d.eager for d in found.get(name, ())):
                    found.setdefault(name, []).append(definition)
                else:
                    found[name] = [definition]
    return found


def _first_line(statement: ast.stmt) -> int:
    decorators = getattr(statement, "decorator_list", None)
    return decorators[0].lineno if decorators else statement.lineno


def _prelude(
    names: list[str],
    definitions: dict[str, list[_Definition]],
    before: int | None = None,
    taken: Callable[[str], bool] = lambda name: False,
) -> tuple[list[_Definition], set[str], dict[str, _Definition]]:
    """Definitions the names need, closed over what those definitions use; names still unresolved; and
    names carried statements read as they run, with the statement (these cannot come from steps).

    ``before``: only statements of cells before this notebook position are carried (what the notebook had run).
    ``taken``: names an earlier step provides (a carried list a step appended to): those come from the step."""
    needed: dict[tuple[str, int], _Definition] = {}
    unresolved: set[str] = set()
    eager_reads: dict[str, _Definition] = {}
    done: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in done:
            continue
        done.add(name)
        if taken(name) and any(d.eager for d in definitions.get(name, ())):
            unresolved.add(name)
            continue
        options = [d for d in definitions.get(name, ()) if not d.eager or before is None or d.index < before] or [
            d for d in definitions.get(name, ()) if not d.eager
        ]
        if not options:
            unresolved.add(name)
            continue
        for definition in options:
            key = (definition.label, definition.order)
            if key in needed:
                continue
            needed[key] = definition
            for read in definition.info.reads:
                if read in BUILTINS:
                    continue
                if definition.eager and read not in definitions:
                    eager_reads.setdefault(read, definition)
                pending.append(read)
    return sorted(needed.values(), key=lambda d: d.order), unresolved, eager_reads


def pipeline_name(notebook_path: str | None, explicit: str | None = None) -> str:
    """A KFP-friendly pipeline name from the notebook's file name."""
    if explicit:
        return check_name(explicit, "pipeline")
    if notebook_path:
        stem = re.sub(r"\W+", "_", notebook_path.rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("_")
        if stem and not stem[0].isdigit():
            return stem[:63]
    return "pipeline"


def _order(steps: dict[str, StepPlan], index: dict[str, int]) -> list[str]:
    """Topological order that keeps notebook order among ready steps; a cycle is an error."""
    remaining = {name: set(plan.upstream) for name, plan in steps.items()}
    ordered: list[str] = []
    while remaining:
        ready = sorted((n for n, deps in remaining.items() if not deps), key=index.__getitem__)
        if not ready:
            cycle = " -> ".join(sorted(remaining, key=index.__getitem__))
            raise PipelineError(f"the steps form a cycle through --after: {cycle}")
        for name in ready:
            ordered.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return ordered


def build_plan(notebook: Notebook, *, notebook_path: str | None = None, name: str | None = None) -> PipelinePlan:
    """Validate the recorded notebook and resolve every step's inputs; errors name step and variable."""
    if not notebook.steps:
        raise PipelineError(
            "no steps recorded: mark cells with %%step NAME and run them "
            "(or give --notebook PATH when the kernel cannot find its notebook file)"
        )
    steps = sorted(notebook.steps, key=lambda s: s.cell.index)
    known = {s.name for s in steps}
    index = {s.name: s.cell.index for s in steps}
    definitions = _notebook_definitions(notebook)
    infos = {s.name: analyze(s.cell.code, s.cell.label) for s in steps}
    for step in steps:  # what earlier runs saw a step change in place, though its code does not show it
        info = infos[step.name]
        for var in changed_in_place(step.cell.code):
            if var not in info.writes:
                info.writes.append(var)
                info.mutated.add(var)
    parameters = notebook.parameters
    # names a step's "change" never replaces: imports, functions, classes, and parameters (literals passed to calls)
    modules_or_code = {n for n, ds in definitions.items() if any(not d.eager for d in ds)} | set(notebook.parameters)

    def provides(step_name: str, var: str) -> bool:
        """The step leaves ``var`` for later steps; a step that only changes a notebook import (``os.environ[…] = …``,
        ``random.seed(0)``) does not replace it."""
        info = infos[step_name]
        return var in info.writes and not (var in info.mutated and var in modules_or_code)

    by_name = {s.name: s for s in steps}

    def after_closure(name: str) -> list[str]:
        """Steps ``name`` runs after through explicit --after edges (transitively), latest in the notebook first."""
        seen: set[str] = set()
        pending = [a for a in by_name[name].after if a in by_name]
        while pending:
            other = pending.pop()
            if other not in seen:
                seen.add(other)
                pending.extend(a for a in by_name[other].after if a in by_name)
        return sorted(seen - {name}, key=index.__getitem__, reverse=True)

    def producer_of(position: int, name: str, var: str) -> str | None:
        """The nearest earlier step that provides ``var``, else a later one this step runs --after."""
        earlier = next((s.name for s in reversed(steps[:position]) if provides(s.name, var)), None)
        if earlier is not None:
            return earlier
        return next((s for s in after_closure(name) if index[s] > index[name] and provides(s, var)), None)

    plans: dict[str, StepPlan] = {}
    consumers: dict[str, set[str]] = {s.name: set() for s in steps}
    for position, step in enumerate(steps):
        for after in step.after:
            if after not in known:
                raise PipelineError(
                    f"step {step.name!r}: --after names unknown step {after!r} (steps: {', '.join(sorted(known))})"
                )
        info = infos[step.name]
        inputs: dict[str, str] = {}
        reads_params: list[str] = []
        missing: list[str] = []
        for var in info.reads:
            producer = producer_of(position, step.name, var)
            if producer is not None:
                inputs[var] = producer
            elif var in parameters:
                reads_params.append(var)
            elif var not in PROVIDED and not any(
                not d.eager or d.index < step.cell.index for d in definitions.get(var, ())
            ):
                missing.append(var)
        prelude_defs, unresolved, eager_reads = _prelude(
            [v for v in info.reads if v not in inputs and v not in parameters],
            definitions,
            step.cell.index,
            lambda var, position=position, name=step.name: producer_of(position, name, var) is not None,
        )
        for var, statement in eager_reads.items():
            if var in parameters:
                reads_params.append(var)
            elif var not in PROVIDED and producer_of(position, step.name, var) is not None:
                raise PipelineError(
                    f"step {step.name!r} uses variable {statement.name!r}, which line {statement.line} of "
                    f"{statement.label} computes from {var!r}, a step's value; it is assigned in {statement.label}, "
                    "an ordinary cell — make that cell a %%step or a parameter"
                )
        # names the notebook functions use may come from steps or parameters too
        for var in sorted(unresolved - set(missing) - PROVIDED):
            producer = producer_of(position, step.name, var)
            if producer is not None:
                inputs[var] = producer
            elif var in parameters:
                reads_params.append(var)
            elif var not in info.writes:  # a name the step assigns itself is there when it calls the function
                missing.append(var)
        if missing:
            var = missing[0]
            later = next((s for s in steps[position + 1 :] if var in infos[s.name].writes), None)
            other = next((c for c in notebook.code if var in analyze_safe(c.code)), None)
            hint = ""
            if later is not None:
                hint = f"; it is assigned in step {later.name!r} ({later.cell.label}), which comes later — add --after or move the cell"
            elif other is not None:
                hint = f"; it is assigned in {other.label}, an ordinary cell — make that cell a %%step or a parameter"
            raise PipelineError(
                f"step {step.name!r} uses variable {var!r}, which no earlier step, parameter, import or notebook function provides{hint}"
            )
        upstream = list(dict.fromkeys(list(step.after) + list(inputs.values())))
        for source in set(inputs.values()):
            consumers[source].add(step.name)
        modules = sorted(
            set(info.modules).union(*(d.info.modules for d in prelude_defs)) if prelude_defs else set(info.modules)
        )
        plans[step.name] = StepPlan(
            name=step.name,
            cell=step.cell,
            inputs=inputs,
            parameters=tuple(dict.fromkeys(reads_params)),
            writes=tuple(w for w in info.writes if not (w in info.mutated and w in modules_or_code)),
            outputs=(),
            metrics=(),
            prelude="\n\n".join(d.source for d in prelude_defs),
            prelude_parts=tuple((d.label, d.line, d.source) for d in prelude_defs),
            carried=tuple(dict.fromkeys((d.label, d.name) for d in prelude_defs if d.eager)),
            modules=tuple(m for m in modules if m),
            upstream=tuple(upstream),
            explicit_after=tuple(step.after),
            settings=step.settings,
        )

    metric_producer: dict[str, str] = {}
    for metric in notebook.metrics:
        producer = next((s.name for s in reversed(steps) if metric in infos[s.name].writes), None)
        if producer is None and metric in parameters:
            # a parameter as a metric: the last step reports the value the run used
            producer = steps[-1].name
            last = plans[producer]
            if metric not in last.parameters:
                plans[producer] = replace(last, parameters=last.parameters + (metric,))
        if producer is None:
            raise PipelineError(f"metric {metric!r} is not assigned by any step")
        metric_producer[metric] = producer

    order = _order(plans, index)
    resolved = []
    for step_name in order:
        plan = plans[step_name]
        read_downstream = {v for c in consumers[step_name] for v, src in plans[c].inputs.items() if src == step_name}
        metrics = tuple(m for m in notebook.metrics if metric_producer[m] == step_name)
        outputs = tuple(w for w in plan.writes if w in read_downstream or w in metrics)
        info = infos[step_name]
        in_place = tuple(
            (w, info.mutation_lines.get(w, 0) + 1 if w in info.mutation_lines else 0)
            for w in outputs
            if w in info.mutated and w in plan.inputs
        )
        resolved.append(replace(plan, outputs=outputs, metrics=metrics, in_place=in_place))
    return PipelinePlan(
        name=pipeline_name(notebook_path, name),
        steps=tuple(resolved),
        parameters=dict(parameters),
        metrics=tuple(notebook.metrics),
        notebook=notebook_path,
        defaults=notebook.defaults,
    )


def analyze_safe(code: str) -> list[str]:
    """Names ``code`` assigns, or none when it does not parse."""
    try:
        return analyze(code).writes
    except PipelineError:
        return []
