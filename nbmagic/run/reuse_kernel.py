"""What a ``%%step`` cell did to the kernel's names, seen from outside its code, and what a reuse would break.

Before the cell runs, :func:`snapshot` notes each name's object (by id and type, holding no reference: a held
reference would change what the cell does, ``ndarray.resize`` refuses it). After it, :func:`bound_by_run` tells
which names the run bound or rebound, names bound out of sight of the code (``globals()[name] = …``, ``exec``),
and names the code assigns on some paths only whose binding cannot be told. :func:`shared_elsewhere` finds, before
a reuse, a name the cell may change in place whose object (or memory) another kernel value also reaches.
"""

from __future__ import annotations

import ast
import gc
import types
from typing import Any

from ..pipeline.analysis import IPYTHON_HISTORY
from .buffers import Buffer, overlap
from .reuse_links import LIMIT, TooLarge, _Walk

_IPYTHON_NAMES = frozenset({"In", "Out", "_oh", "_ih", "_dh", "_exit_code", "exit", "quit", "get_ipython"})


def ipython_name(name: str) -> bool:
    """A name IPython itself keeps in the namespace (output history, ``In``/``Out``) or a dunder."""
    return name in _IPYTHON_NAMES or bool(IPYTHON_HISTORY.match(name)) or (name[:2] == "__" == name[-2:])


def snapshot(namespace: dict[str, Any]) -> dict[str, tuple[int, type]]:
    return {name: (id(value), type(value)) for name, value in namespace.items()}


_SIZED = (list, tuple, dict, str, bytes, set, frozenset, range)


def loop_sizes(code: str, namespace: dict[str, Any], fixed: set[str]) -> dict[str, int]:
    """Name -> its int value (a ``range`` argument) or its length (a loop over it, ``enumerate`` of it) of the kernel's
    values that ``for`` loops of the cell walk, taken before it runs; only names in ``fixed`` (the cell neither
    binds nor changes them, and their values are part of its key)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.For):
            continue
        for name in ast.walk(node.iter):
            if not isinstance(name, ast.Name) or name.id not in fixed or name.id not in namespace:
                continue
            value = namespace[name.id]
            if type(value) is int:
                found[name.id] = value
            elif type(value) in _SIZED:
                found[name.id] = len(value)
    return found


def always_bound(code: str, known: dict[str, int] | None = None) -> set[str]:
    """Names bound by the cell's statements that run whenever the cell succeeds: assignments, imports, definitions,
    ``with … as`` and ``%time`` at its top level; a ``for`` loop's target (and what its body binds, when it has no
    ``break``/``continue``) over a non-empty literal or ``range`` of constants; a ``try``'s names bound in its body
    (and ``else``) and in every handler that does not raise, and in its ``finally``. Names bound in a branch, a
    ``while`` or ``with`` body, a loop that may not run, or by ``:=`` are left out."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return _block(tree.body, known or {})


def _targets(node: ast.expr, found: set[str]) -> None:
    if isinstance(node, ast.Name):
        found.add(node.id)
    elif isinstance(node, (ast.Tuple, ast.List)):
        for item in node.elts:
            _targets(item, found)
    elif isinstance(node, ast.Starred):
        _targets(node.value, found)


def _int(node: ast.expr, known: dict[str, int]) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int(node.operand, known)
        return None if inner is None else -inner
    return known.get(node.id) if isinstance(node, ast.Name) else None


def _runs_once(node: ast.For, known: dict[str, int]) -> bool:
    """The loop's iterable has an item: a non-empty literal, a ``range`` of integer constants or of ``known`` ints,
    a ``known`` value of non-zero length, or ``enumerate`` of one."""
    it = node.iter
    if (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "enumerate"
        and len(it.args) == 1
        and not it.keywords
    ):
        it = it.args[0]
    if isinstance(it, ast.Name):
        return known.get(it.id, 0) > 0  # a length (an int there would make the loop raise)
    if isinstance(it, (ast.List, ast.Tuple, ast.Set)):
        return bool(it.elts) and not any(isinstance(e, ast.Starred) for e in it.elts)
    if isinstance(it, ast.Constant) and isinstance(it.value, (str, bytes)):
        return bool(it.value)
    if (
        isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "range"
        and not it.keywords
        and 1 <= len(it.args) <= 3
    ):
        bounds = [_int(a, known) for a in it.args]
        if any(b is None for b in bounds):
            return False
        try:
            return len(range(*bounds)) > 0  # type: ignore[arg-type]
        except ValueError:  # a zero step
            return False
    return False


def _raises(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], ast.Raise)


def _block(body: list[ast.stmt], known: dict[str, int]) -> set[str]:
    """The names a block binds whenever it runs to its end."""
    found: set[str] = set()
    for node in body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                _targets(target, found)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            _targets(node.target, found)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    _targets(item.optional_vars, found)
        elif isinstance(node, ast.For) and _runs_once(node, known):
            _targets(node.target, found)
            if not any(isinstance(n, (ast.Break, ast.Continue)) for n in ast.walk(node)):
                found |= _block(node.body, known)
        elif isinstance(node, ast.Try):
            bound = _block(node.body, known) | _block(node.orelse, known)
            for handler in node.handlers:
                if not _raises(handler.body):
                    bound &= _block(handler.body, known)
            found |= bound | _block(node.finalbody, known)
    # %time x = ... is left to the check of names bound on some paths: %time prints an exception and the cell
    # goes on, so its assignment may not have happened
    return found


_NAMESPACE_CALLS = frozenset({"globals", "vars", "locals"})
_WRITING_METHODS = frozenset({"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"})


_READING_CALLS = frozenset(
    {"len", "print", "repr", "str", "dict", "list", "sorted", "set", "tuple", "frozenset", "any", "all"}
)
_READING_METHODS = frozenset({"format", "format_map"})


def _reads_only(call: ast.Call) -> bool:
    """A call that only reads the namespace it is given (``len(globals())``, ``"{a}".format_map(locals())``)."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in _READING_CALLS
    return isinstance(func, ast.Attribute) and func.attr in _READING_METHODS


def dynamic_names(code: str) -> str | None:
    """Why the cell's names cannot be told from its code: it calls ``exec`` or ``eval`` (either may bind or remove
    a name, even to an object of a recycled id), or writes through ``globals()``, ``vars()`` or ``locals()``
    (a subscript assigned or deleted, a writing method, or the namespace passed on to a call). None otherwise."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        name = node.func.id
        if name in ("exec", "eval"):
            return f"it calls {name}(), which may bind names out of sight of its code; a reuse would not"
        if name not in _NAMESPACE_CALLS or node.args or node.keywords:
            continue
        parent = parents.get(id(node))
        unpacked = isinstance(parent, ast.keyword) and parent.arg is None  # f(**locals()) gets a copy
        writes = not unpacked and (
            (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, (ast.Store, ast.Del)))
            or (isinstance(parent, ast.Attribute) and parent.attr in _WRITING_METHODS)
            or (isinstance(parent, ast.Call) and node is not parent.func and not _reads_only(parent))
            or isinstance(parent, (ast.Assign, ast.NamedExpr, ast.keyword))
        )
        if writes:
            return f"it writes through {name}() (or passes it on), out of sight of its code; a reuse would not"
    return None


def bound_by_run(
    before: dict[str, tuple[int, type]],
    namespace: dict[str, Any],
    code: str,
    writes: tuple[str, ...],
    in_place: set[str],
    deleted: set[str],
    read: set[str] = frozenset(),  # type: ignore[assignment]
    sizes: dict[str, int] | None = None,
) -> tuple[set[str], str | None]:
    """(the names of ``writes`` the run left as outputs, why the results cannot be reused or None).

    A name the code binds at its top level is an output; one it changes in place (``in_place``) too; one it binds
    on some paths only is an output when the run bound it to another object than before, or when the cell reads it
    (``read``: its value is then part of the key, so the stored value is what the kernel holds either way,
    ``model = model.eval()`` in a ``with`` block). Not reusable: the run
    bound (or removed) a name its code does not show, or left a some-paths name as it was (not bound, or bound to
    the very object it held: cannot be told) — reused, the stored value would replace the kernel's."""
    after = snapshot(namespace)
    known = set(writes) | in_place | deleted
    for name, mark in after.items():
        if name not in known and before.get(name) != mark and not ipython_name(name):
            return set(), f"it binds {name!r} out of sight of its code (globals(), exec, a function); a reuse would not"
    for name in before:
        if name not in after and name not in known and not ipython_name(name):
            return set(), f"it removes {name!r} out of sight of its code; a reuse would not"
    # ``sizes``: see :func:`loop_sizes`; a value the run changed in place may have changed size before the loop
    always = always_bound(code, {n: v for n, v in (sizes or {}).items() if n not in in_place})
    outputs: set[str] = set()
    for name in writes:
        if name not in after:
            continue  # deleted by the cell (reuse deletes it too) or never bound
        if name in always or name in in_place or name in read or before.get(name) != after[name]:
            outputs.add(name)
        elif name not in before:
            continue
        else:
            return outputs, (
                f"it assigns {name!r} on some paths only and this run left the kernel's {name!r} as it was;"
                " reused, the stored value would replace the kernel's"
            )
    unbound = [n for n in writes if n not in after and n not in before and n not in deleted]
    if unbound:
        return outputs, f"it assigns {unbound[0]!r} on some paths only and this run did not"
    return outputs, None


class _KernelWalk(_Walk):
    """The shared-object walk, reaching into objects it cannot store by what the garbage collector sees them hold
    (C objects); globals dicts, frames and modules are not followed. A pandas object column costs what its items
    do (a 64th of a row each when all are numbers or strings), not a row each: a large frame elsewhere in the
    kernel is walked, not given up on."""

    spent = False  # the bound on work or time was reached: the walk ends

    def charge(self, n: int = 1) -> None:
        try:
            super().charge(n)
        except TooLarge:
            self.spent = True
            raise

    def _pandas(self, obj: Any, found: set[int]) -> Any:
        try:
            dtypes = list(obj.dtypes) if hasattr(obj, "columns") else [obj.dtype]
            self.left += len(obj) * sum(
                1 for d in dtypes if getattr(d, "hasobject", True) and getattr(d, "kind", "") != "O"
            )
        except Exception:  # noqa: BLE001 - the walk below says what it cannot look into
            pass
        return super()._pandas(obj, found)

    def _children(self, obj: Any, found: set[int]) -> Any:
        try:
            return super()._children(obj, found)
        except TooLarge:
            if self.spent:
                raise
            found.add(id(obj))
            return [
                child
                for child in gc.get_referents(obj)
                if not isinstance(child, (types.ModuleType, types.FrameType, types.CodeType))
                and not (type(child) is dict and "__builtins__" in child)
            ]


def shared_elsewhere(names: list[str], namespace: dict[str, Any], rebound: set[str]) -> str | None:
    """Why a reuse binding ``names`` (the cell may change their objects in place) would differ from running it:
    another kernel value reaches an object of theirs, or uses memory of theirs (a frame made over an array without
    a copy), so a change in place would reach it and a loaded copy would not. ``rebound``: every name the reuse
    binds (their current objects leave the kernel with them). Raises
    :class:`~nbmagic.run.reuse_links.TooLarge` when the values take too much to walk."""
    with _KernelWalk(namespace, LIMIT) as walk:  # the collector's passes in this thread are no work of the walk
        mine: dict[int, str] = {}
        memory: list[tuple[str, Buffer]] = []  # (name, buffer): theirs, then the other values'
        for name in names:
            for ident in walk.identities(namespace[name]):
                mine.setdefault(ident, name)
            memory.extend((name, b) for b in walk.take_buffers())
        if not mine:
            return None
        for other, value in list(namespace.items()):
            if other in rebound or ipython_name(other) or isinstance(value, (types.ModuleType, type)):
                continue
            hit = next((mine[i] for i in walk.identities(value) if i in mine), None)
            if hit is not None:
                return (
                    f"an object of {hit!r} is also reached from {other!r}; the cell may change it in place, which a value loaded from"
                    " the store would not pass on"
                )
            memory.extend((other, b) for b in walk.take_buffers())
        changing = set(names)
        walk.charge(len(memory))
        pair = overlap(memory, lambda a, b: (a in changing) != (b in changing), walk.charge) if memory else None
    if pair is None:
        return None
    hit, other = pair if pair[0] in changing else pair[::-1]
    return (
        f"{hit!r} shares memory with {other!r}; the cell may change it in place, which a value loaded from the store"
        " would not pass on"
    )
