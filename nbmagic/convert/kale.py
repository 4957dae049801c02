"""Kale-tagged notebooks (cell tags ``step:``/``block:``, ``prev:``, ``imports``, ``functions``,
``pipeline-parameters``, ``pipeline-metrics``, ``skip``, ``limit:``, ``image:``) -> nbmagic magics.

Untagged cells continue the tagged block above them, as in Kale. ``skip`` cells become raw cells (kept, never run,
never carried). Tags without an nbmagic equivalent (``annotation:``, ``label:``, other limits) are kept as a comment
in the cell and reported.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NbMagicError
from ..pipeline.model import check_name

SPECIAL = ("imports", "functions", "pipeline-parameters", "pipeline-metrics", "skip")
_STEP_TAG = re.compile(r"^(?:step|block):([_a-z][_a-z0-9]*)?$")
_PREV_TAG = re.compile(r"^prev:([_a-z][_a-z0-9]*)$")
_LIMIT_TAG = re.compile(r"^limit:([_a-z\-./]+):([_a-zA-Z0-9.]+)$")
_IMAGE_TAG = re.compile(r"^image:(.+)$")
_META_TAG = re.compile(r"^(annotation|label):(.+)$")
_LIMIT_OPTIONS = {"nvidia.com/gpu": "--gpu", "cpu": "--cpu-limit", "memory": "--memory-limit"}
_SERVE_IMPORT = re.compile(r"^\s*from\s+kale\.common\.serveutils\s+import\s+.*serve")
_SERVE_CALL = re.compile(r"^(\s*)(?:\w+\s*=\s*)?serve\((\w+)")


@dataclass
class _Tags:
    kind: str | None = None  # a special tag, a step name, or None (untagged)
    after: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # tags with no nbmagic equivalent


def _settings(tag: str, label: str, into: _Tags) -> bool:
    """``limit:`` / ``image:`` / ``annotation:`` / ``label:`` tags -> step options (or kept tags)."""
    limit = _LIMIT_TAG.match(tag)
    if limit and limit.group(1) in _LIMIT_OPTIONS:
        into.options += [_LIMIT_OPTIONS[limit.group(1)], limit.group(2)]
        return True
    image = _IMAGE_TAG.match(tag)
    if image:
        into.options += ["--image", image.group(1)]
        return True
    if limit or _META_TAG.match(tag):
        into.kept.append(tag)
        return True
    return False


def _parse_tags(tags: list[Any], label: str) -> _Tags:
    found = _Tags()
    for tag in tags:
        if not isinstance(tag, str):
            raise NbMagicError(f"{label}: Kale tag {tag!r} is not a string")
        if tag in SPECIAL:
            return _Tags(kind=tag)
        step = _STEP_TAG.match(tag)
        prev = _PREV_TAG.match(tag)
        if step:
            if step.group(1):
                if found.kind and found.kind != step.group(1):
                    raise NbMagicError(f"{label}: two step names ({found.kind}, {step.group(1)}); Kale allows one")
                found.kind = check_name(step.group(1), "step")
        elif prev:
            found.after.append(check_name(prev.group(1), "step"))
        elif not _settings(tag, label, found):
            raise NbMagicError(f"{label}: unknown Kale tag {tag!r}")
    return found


def _metric_names(source: str, label: str) -> list[str]:
    """A ``pipeline-metrics`` cell: one ``print(name)`` per metric."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NbMagicError(f"{label}: syntax error on line {exc.lineno} of the pipeline-metrics cell") from None
    names: list[str] = []
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id == "print"
            and all(isinstance(a, ast.Name) for a in call.args)
        ):
            names += [a.id for a in call.args]
        else:
            raise NbMagicError(
                f"{label}, line {statement.lineno}: a pipeline-metrics cell holds only print(name) lines"
            )
    return names


def _serve_lines(source: str) -> str:
    """Kale's ``serve(model)`` -> a comment pointing at ``%serve``."""
    lines = []
    for line in source.splitlines():
        call = _SERVE_CALL.match(line)
        if _SERVE_IMPORT.match(line):
            lines.append("# Kale's serve import: with nbmagic, serve a model with %serve (see below)")
        elif call:
            lines.append(f"{call.group(1)}# was Kale's `{line.strip()}`: run `%serve {call.group(2)}` in its own cell")
        else:
            lines.append(line)
    return "\n".join(lines) + ("\n" if source.endswith("\n") else "")


def _step_line(name: str, after: list[str], options: list[str]) -> str:
    words = [name] + (["--after", *after] if after else []) + options
    return "%%step " + " ".join(shlex.quote(w) for w in words)


def convert_kale(source: Path, output: Path) -> list[str]:
    """Write ``output``: ``source`` with Kale's tags turned into nbmagic magics. Returns notes (one line each)."""
    import nbformat

    try:
        notebook = nbformat.read(str(source), as_version=4)
    except Exception as exc:  # nbformat raises several types for unreadable files
        raise NbMagicError(f"cannot read notebook {source}: {exc}") from None
    notes: list[str] = []
    previous: str | None = None  # the block untagged cells continue
    steps: set[str] = set()
    metrics: list[str] = []
    cells: list[Any] = []
    defaults = _Tags()
    kale_meta = notebook.metadata.pop("kubeflow_notebook", None) or {}
    for tag in kale_meta.get("steps_defaults", []) or []:
        if isinstance(tag, str) and not _settings(tag, "notebook metadata", defaults):
            notes.append(f"notebook metadata: Kale step default {tag!r} has no nbmagic equivalent; left out")
    if kale_meta.get("docker_image"):
        defaults.options += ["--image", kale_meta["docker_image"]]
    for tag in defaults.kept:
        notes.append(f"notebook metadata: Kale step default {tag!r} has no nbmagic equivalent; left out")
    if defaults.options:
        cells.append(
            nbformat.v4.new_code_cell("%pipeline_config " + " ".join(shlex.quote(o) for o in defaults.options))
        )
    for number, cell in enumerate(notebook.cells, start=1):
        label = f"{source.name} cell {number}"
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        tags = _parse_tags(list(cell.metadata.get("tags", []) or []), label)
        kind = tags.kind or previous
        body = _serve_lines(cell.source)
        if tags.kind == "skip":
            raw = nbformat.v4.new_raw_cell("# Kale: skip (kept, not run)\n" + cell.source)
            raw.metadata = {k: v for k, v in cell.metadata.items() if k != "tags"}
            cells.append(raw)
            continue  # a skipped cell does not change what untagged cells continue
        if tags.kind is None and previous is None and (tags.options or tags.kept or tags.after):
            raise NbMagicError(f"{label}: step settings or prev: tags without a step name")
        if kind in ("imports", "functions") or kind is None:
            new_source = body
        elif kind == "pipeline-parameters":
            new_source = "%%pipeline_parameters\n" + body
        elif kind == "pipeline-metrics":
            names = _metric_names(cell.source, label)
            metrics += names
            new_source = "%pipeline_metrics " + " ".join(names) if names else "# (Kale pipeline-metrics: none)"
        else:
            for name in tags.after:
                if name not in steps:
                    raise NbMagicError(f"{label}: prev:{name} names a step not defined above")
            kept = "".join(f"# Kale tag {t!r}: no nbmagic equivalent\n" for t in tags.kept)
            for tag in tags.kept:
                notes.append(f"{label}: Kale tag {tag!r} has no nbmagic equivalent; kept as a comment")
            new_source = _step_line(kind, tags.after, tags.options) + "\n" + kept + body
            steps.add(kind)
        previous = kind
        converted = nbformat.v4.new_code_cell(new_source)
        converted.metadata = {k: v for k, v in cell.metadata.items() if k != "tags"}
        if cell.get("id"):
            converted.id = cell.id
        cells.append(converted)
    from nbformat.v4.nbbase import random_cell_id

    notebook.cells = cells
    notebook.nbformat_minor = max(int(notebook.get("nbformat_minor", 0)), 5)
    for cell in notebook.cells:  # cell ids (nbformat 4.5) let several cells of one step be told apart
        if not cell.get("id"):
            cell.id = random_cell_id()
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(output))
    notes.append(f"converted {len(steps)} steps, {len(metrics)} metrics -> {output}")
    return notes
