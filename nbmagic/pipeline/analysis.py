"""What a cell reads and writes: IPython's transformers first, then ``ast`` and ``symtable``."""

from __future__ import annotations

import ast
import builtins
import copy
import re
import symtable
from dataclasses import dataclass, field, fields
from functools import lru_cache

from ..arguments import split
from ..errors import PipelineError

# IPython's output history (`_`, `__`, `_5`, `_i5`): never a step's value
IPYTHON_HISTORY = re.compile(r"^(_{1,3}|_i{0,3}\d+|_i{1,3})$")
BUILTINS = frozenset(dir(builtins)) | {"get_ipython", "display", "__file__", "__name__"}
# magics whose argument (line) or body (cell) is Python code run in the user namespace
CODE_LINE_MAGICS = frozenset({"time", "timeit", "prun"})
CODE_CELL_MAGICS = frozenset({"time", "timeit", "prun", "capture"})


@dataclass
class CodeInfo:
    """Names a piece of code reads before binding them, binds, and imports."""

    reads: list[str] = field(default_factory=list)  # in first-read order
    writes: list[str] = field(default_factory=list)  # in first-write order
    imports: dict[str, str] = field(default_factory=dict)  # bound name -> top-level module
    definitions: dict[str, str] = field(default_factory=dict)  # def/class/import name -> its source
    lines: dict[str, int] = field(default_factory=dict)  # def/class/import name -> first line in the cell
    # writes that only change an existing object (``df["a"] = …``, ``model.fit(X)``, ``del d[k]``), never bind it
    mutated: set[str] = field(default_factory=set)
    mutation_lines: dict[str, int] = field(default_factory=dict)  # mutated name -> first line that changes it
    uses_ipython: bool = False

    @property
    def modules(self) -> set[str]:
        return set(self.imports.values())


@lru_cache(maxsize=512)
def to_python(source: str) -> str:
    """IPython source (magics, ``!shell``) -> plain Python, as IPython itself runs it."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def parse(code: str, where: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as exc:
        raise PipelineError(f"{where}: syntax error on line {exc.lineno}: {exc.msg}") from None


class _Scanner(ast.NodeVisitor):
    """Walks module-level statements in execution order, tracking what is bound so far."""

    def __init__(self, info: CodeInfo) -> None:
        self.info = info
        self.bound: set[str] = set()
        self.assigned: set[str] = set()  # names truly bound (not only mutated)
        self.line = 0  # the top-level statement being scanned
        self.aliases: dict[str, list[str]] = {}  # loop variable -> names it walks over (``for d in [a, b]``)

    # -- names -------------------------------------------------------------------------
    def read(self, name: str) -> None:
        if name not in self.bound and name not in BUILTINS and name not in self.info.reads:
            self.info.reads.append(name)

    def write(self, name: str) -> None:
        self.aliases.pop(name, None)
        self.bound.add(name)
        self.assigned.add(name)
        if name not in self.info.writes and not IPYTHON_HISTORY.match(name):
            self.info.writes.append(name)

    def mutate(self, name: str) -> None:
        """The object bound to ``name`` changes in place: it is read, and the cell's version is a write."""
        for target in self.aliases.get(name, ()):
            self.mutate(target)  # ``for d in [train, test]: d["x"] = …`` changes train and test
        self.info.mutation_lines.setdefault(name, self.line)
        self.read(name)
        was_assigned = name in self.assigned
        self.write(name)
        if not was_assigned:
            self.assigned.discard(name)
            self.info.mutated.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.read(node.id)
        else:
            self.write(node.id)

    def _mutated_base(self, target: ast.expr) -> None:
        """``df["a"] = …`` or ``model.coef_ = …`` changes ``df``/``model``: a read and a write."""
        base = target
        while isinstance(base, (ast.Attribute, ast.Subscript)):
            if isinstance(base, ast.Subscript):
                self.visit(base.slice)
            base = base.value
        if isinstance(base, ast.Name):
            self.mutate(base.id)
        else:
            self.visit(base)

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            self._mutated_base(target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)
        elif isinstance(target, ast.Starred):
            self._target(target.value)
        else:
            self.visit(target)

    # -- statements in evaluation order ------------------------------------------------
    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._target(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
            self.write(node.target.id)
        else:
            self._mutated_base(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._target(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        """``del x`` needs ``x`` and leaves the cell without it; ``del d[k]`` / ``del o.a`` change ``d`` / ``o``."""
        targets = list(node.targets)
        while targets:
            target = targets.pop(0)
            if isinstance(target, (ast.Tuple, ast.List)):
                targets[:0] = target.elts
            elif isinstance(target, ast.Name):
                self.read(target.id)
                self.bound.discard(target.id)
            else:
                self._mutated_base(target)

    def visit_Expr(self, node: ast.Expr) -> None:
        """A method call whose result is dropped (``model.fit(X)``, ``rows.append(r)``) changes its object."""
        self.visit(node.value)
        base: ast.expr = node.value
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id not in BUILTINS:
            # ``add_col(df)``: a notebook function may change what it is passed
            for argument in list(base.args) + [k.value for k in base.keywords]:
                if isinstance(argument, ast.Starred):
                    argument = argument.value
                if isinstance(argument, ast.Name) and argument.id not in self.info.imports:
                    self.mutate(argument.id)
            return
        if not (isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute)):
            return
        while isinstance(base, (ast.Attribute, ast.Subscript, ast.Call)):
            if isinstance(base, ast.Call):
                if not isinstance(base.func, (ast.Attribute, ast.Subscript)):
                    return  # ``make().fit()`` changes a new object, not a name
                base = base.func
            else:
                base = base.value
        if isinstance(base, ast.Name) and base.id not in BUILTINS and base.id not in self.info.imports:
            self.mutate(base.id)

    # -- match statements: capture patterns bind names ---------------------------------
    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name:
            self.write(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.write(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        for key in node.keys:
            self.visit(key)
        for pattern in node.patterns:
            self.visit(pattern)
        if node.rest:
            self.write(node.rest)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.write(node.target.id)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self._target(node.target)
        walked = [e.id for e in getattr(node.iter, "elts", []) if isinstance(e, ast.Name)]
        alias = node.target.id if isinstance(node.target, ast.Name) else None
        if alias and walked and isinstance(node.iter, (ast.List, ast.Tuple)):
            self.aliases[alias] = walked
        for statement in node.body + node.orelse:
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._target(item.optional_vars)
        for statement in node.body:
            self.visit(statement)

    visit_AsyncWith = visit_With

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.write(node.name)
        for statement in node.body:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            self.write(bound)
            self.info.imports[bound] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")[0]
        for alias in node.names:
            if alias.name == "*":
                raise PipelineError(
                    f"'from {node.module} import *' hides which names a step uses; import names explicitly"
                )
            bound = alias.asname or alias.name
            self.write(bound)
            if node.level == 0:
                self.info.imports[bound] = module

    def _scope(self, node: ast.AST) -> None:
        """Functions, classes, lambdas, comprehensions: decorators/defaults now, free names later."""
        for decorator in getattr(node, "decorator_list", []):
            self.visit(decorator)
        args = getattr(node, "args", None)
        if isinstance(args, ast.arguments):
            for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
                self.visit(default)
        for base in getattr(node, "bases", []) + [k.value for k in getattr(node, "keywords", [])]:
            self.visit(base)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            self.visit(node.generators[0].iter)  # evaluated in the enclosing scope
            for target in _comprehension_walrus_targets(node):
                self.write(target)  # ``[y for x in xs if (y := f(x))]`` binds ``y`` in the cell
        name = getattr(node, "name", None)
        if name:
            self.write(name)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope
    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_Global(self, node: ast.Global) -> None:  # module-level `global` is a no-op
        return None


def _comprehension_walrus_targets(node: ast.AST) -> list[str]:
    """Names ``:=`` binds inside a comprehension (they land in the enclosing scope), not inside nested lambdas."""
    found: list[str] = []
    pending = list(ast.iter_child_nodes(node))
    while pending:
        child = pending.pop(0)
        if isinstance(child, ast.NamedExpr) and isinstance(child.target, ast.Name):
            found.append(child.target.id)
        if not isinstance(child, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(child))
    return found


def _function_reads(code: str) -> dict[tuple[str, int], set[str]]:
    """(function name, line) -> names its body reads before binding them, in execution order."""
    found: dict[tuple[str, int], set[str]] = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scanner = _Scanner(CodeInfo())
            arguments = node.args
            scanner.bound |= {a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs}
            scanner.bound |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
            for statement in node.body:
                scanner.visit(statement)
            found[(node.name, node.lineno)] = set(scanner.info.reads)
    return found


def _nested_globals(code: str) -> tuple[set[str], set[str]]:
    """Global names nested scopes read, and those they assign through ``global``."""
    reads: set[str] = set()
    writes: set[str] = set()
    first_reads = _function_reads(code)

    def walk(table: symtable.SymbolTable) -> None:
        for child in table.get_children():
            for symbol in child.get_symbols():
                if symbol.is_global():
                    key = (child.get_name(), child.get_lineno())
                    if symbol.is_declared_global() and key in first_reads:
                        # ``global x`` then ``x = …; use(x)`` reads nothing; ``x += 1`` reads x first
                        if symbol.get_name() in first_reads[key]:
                            reads.add(symbol.get_name())
                    elif symbol.is_referenced():
                        reads.add(symbol.get_name())
                    if symbol.is_declared_global() and symbol.is_assigned():
                        writes.add(symbol.get_name())
                elif child.get_type() == "class" and symbol.is_referenced() and not symbol.is_assigned():
                    reads.add(symbol.get_name())
            walk(child)

    walk(symtable.symtable(code, "<cell>", "exec"))
    return reads, writes


def function_globals(source: str) -> list[str]:
    """Global names one ``def`` (``source``, decorators included) reads or assigns through ``global``: its
    decorators, default values, body and nested scopes (comprehensions, lambdas, inner functions, classes),
    in first-use order."""
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise PipelineError("expected one def statement")
    header = list(node.decorator_list) + list(node.args.defaults) + [d for d in node.args.kw_defaults if d]
    names = {n.id: None for e in header for n in ast.walk(e) if isinstance(n, ast.Name)}
    reads, writes = _nested_globals(source)
    used = reads | writes
    body = sorted((n for n in ast.walk(node) if isinstance(n, ast.Name)), key=lambda n: (n.lineno, n.col_offset))
    for n in body:
        if n.id in used:
            names.setdefault(n.id, None)
    for name in sorted(used):
        names.setdefault(name, None)
    return list(names)


def _is_ipython_call(node: ast.AST, method: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == method
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "get_ipython"
    )


def _magic_code(tree: ast.AST) -> list[str]:
    """Python code carried inside ``%time``/``%%capture``-style magics (as string arguments)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if _is_ipython_call(node, "run_line_magic") and len(node.args) >= 2:
            name, line = node.args[0], node.args[1]
            if isinstance(name, ast.Constant) and name.value in CODE_LINE_MAGICS and isinstance(line, ast.Constant):
                found.append(str(line.value))
        elif _is_ipython_call(node, "run_cell_magic") and len(node.args) >= 3:
            name, line, body = node.args[:3]
            if isinstance(name, ast.Constant) and name.value in CODE_CELL_MAGICS and isinstance(body, ast.Constant):
                found.append(str(body.value))
                if name.value == "capture" and isinstance(line, ast.Constant):
                    words = [w for w in split(str(line.value)) if not w.startswith("-")]
                    if words:
                        found.append(f"{words[0]} = None")
    return found


def analyze(code: str, where: str = "cell") -> CodeInfo:
    """Analyse plain Python ``code`` (already transformed by :func:`to_python`).

    The same code is analysed once per process (every ``%%step`` cell builds the plan again); each caller gets
    its own copy to extend."""
    found = _analyzed(code, where)
    return CodeInfo(**{f.name: copy.copy(getattr(found, f.name)) for f in fields(CodeInfo)})


@lru_cache(maxsize=2048)
def _analyzed(code: str, where: str) -> CodeInfo:
    tree = parse(code, where)
    info = CodeInfo()
    scanner = _Scanner(info)
    for statement in tree.body:
        for inner in _magic_code(statement):
            sub = analyze(to_python(inner), where)
            for name in sub.reads:
                scanner.read(name)
            for name in sub.writes:
                scanner.mutate(name) if name in sub.mutated else scanner.write(name)
            info.imports.update(sub.imports)
        scanner.line = statement.lineno
        scanner.visit(statement)
        if isinstance(statement, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            segment = ast.get_source_segment(code, statement) or ast.unparse(statement)
            first_line = statement.lineno
            if (
                isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and statement.decorator_list
            ):
                first = statement.decorator_list[0]
                lines = code.splitlines()
                segment = "\n".join(lines[first.lineno - 1 : statement.end_lineno])
                first_line = first.lineno
            names = (
                [statement.name]
                if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                else [
                    a.asname or (a.name.split(".")[0] if isinstance(statement, ast.Import) else a.name)
                    for a in statement.names
                ]
            )
            for name in names:
                info.definitions[name] = segment
                info.lines[name] = first_line
    nested_reads, nested_writes = _nested_globals(code)
    all_bound = set(info.writes)
    for name in sorted(nested_reads - all_bound - BUILTINS - set(info.reads)):
        info.reads.append(name)
    for name in sorted(nested_writes):
        if name not in info.writes:
            info.writes.append(name)
    info.mutated -= scanner.assigned | nested_writes
    info.uses_ipython = "get_ipython" in code
    return info
