"""Package a notebook pre-processing function with exactly what it needs, and load it back in a server.

Every global name the function (and the notebook functions it calls) uses must be an import, a notebook
function (its source is packaged), or an object passed with ``--with`` (serialized with dill); anything else
is an error naming the missing name. Names come from the pipeline's code analysis of the function's source
(:func:`nbmagic.pipeline.analysis.function_globals`).
"""

from __future__ import annotations
import __future__

import ast
import builtins
import importlib
import inspect
import json
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbmagic.pipeline.analysis import function_globals
from nbmagic.serve.errors import ServeError

MANIFEST = "transformer.json"
_NOTEBOOK_MODULES = {"__main__", "__mp_main__"}


@dataclass
class TransformerSpec:
    """A transformer as data: entry point, imports, notebook function sources (dependencies first), assets."""

    entry: str
    imports: list[dict[str, str | None]] = field(default_factory=list)
    functions: list[dict[str, str]] = field(default_factory=list)
    assets: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "imports": self.imports,
            "functions": self.functions,
            "assets": sorted(self.assets),
        }


def global_names(fn: types.FunctionType) -> list[str]:
    """Global names ``fn`` uses, in first-use order (decorators, defaults, body and nested scopes)."""
    _def_node(fn)  # a def of its own, not a lambda
    return function_globals(_source(fn))


def _source(fn: types.FunctionType) -> str:
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise ServeError(f"cannot read the source of function '{fn.__name__}': {exc}") from None


def _def_node(fn: types.FunctionType) -> ast.FunctionDef | ast.AsyncFunctionDef:
    tree = ast.parse(_source(fn))
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ServeError(f"function '{fn.__name__}' has no def statement of its own (lambda?): use def")
    return node


def _importable(value: Any) -> tuple[str, str] | None:
    """(module, qualname) when ``value`` can be imported by name from a real module."""
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not module or not qualname or module in _NOTEBOOK_MODULES or "<locals>" in qualname:
        return None
    return module, qualname


def _notebook_function(value: Any) -> types.FunctionType | None:
    """The notebook ``def`` behind ``value``, through decorators that keep ``__wrapped__`` (functools.wraps,
    lru_cache): its source carries the decorator lines, so the server applies them again."""
    try:
        inner = inspect.unwrap(value)
    except ValueError:  # a __wrapped__ cycle
        return None
    if isinstance(inner, types.FunctionType) and inner.__module__ in _NOTEBOOK_MODULES:
        return inner
    return None


def capture(fn: Any, name: str, with_objects: dict[str, Any] | None = None) -> TransformerSpec:
    """Collect ``fn`` (the transformer, called ``name`` in the notebook) and everything it uses."""
    with_objects = dict(with_objects or {})
    if not callable(fn):
        raise ServeError(f"transformer '{name}' ({type(fn).__name__}) is not a function")
    spec = TransformerSpec(entry=name)
    inner = _notebook_function(fn)
    if inner is None:
        where = _importable(fn)
        if where is None:
            raise ServeError(f"transformer '{name}' must be a def function in the notebook or an importable function")
        spec.imports.append({"name": name, "module": where[0], "attr": where[1]})
    else:
        _collect(inner, name, spec, with_objects, seen=set())
    for key, value in with_objects.items():
        spec.assets.setdefault(key, value)
    return spec


def _collect(
    fn: types.FunctionType, name: str, spec: TransformerSpec, with_objects: dict[str, Any], seen: set[str]
) -> None:
    seen.add(name)
    if fn.__name__ == "<lambda>":
        raise ServeError(f"transformer function '{name}' is a lambda: define it with def")
    if fn.__closure__:
        free = ", ".join(fn.__code__.co_freevars)
        raise ServeError(f"function '{name}' uses variables of an enclosing function ({free}): define it at top level")
    namespace = fn.__globals__
    for ref in global_names(fn):
        if ref in seen or ref in spec.assets or any(i["name"] == ref for i in spec.imports):
            continue
        if ref in with_objects:
            spec.assets[ref] = with_objects[ref]
            continue
        if ref not in namespace:
            if hasattr(builtins, ref):
                continue
            raise ServeError(f"function '{name}' uses '{ref}', which is not defined in the notebook")
        value = namespace[ref]
        if isinstance(value, types.ModuleType):
            spec.imports.append({"name": ref, "module": value.__name__, "attr": None})
        elif _notebook_function(value) is not None:
            _collect(_notebook_function(value), ref, spec, with_objects, seen)
        elif (inspect.isclass(value) or inspect.isroutine(value)) and _importable(value):
            module, qualname = _importable(value)  # type: ignore[misc]
            spec.imports.append({"name": ref, "module": module, "attr": qualname})
        else:
            raise ServeError(
                f"function '{name}' uses '{ref}' ({type(value).__name__}), which is not an import, a notebook "
                f"function or a --with object: add --with {ref}"
            )
    spec.functions.append({"name": name, "source": _source(fn)})


def write(spec: TransformerSpec, directory: Path) -> None:
    """Write the manifest and one dill file per asset; an asset that cannot be serialized is an error."""
    import dill

    assets = directory / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for key, value in spec.assets.items():
        if not key.isidentifier():
            raise ServeError(f"--with name '{key}' is not a Python identifier")
        try:
            data = dill.dumps(value, recurse=True)
        except Exception as exc:  # noqa: BLE001 - dill/pickle raise many types
            raise ServeError(
                f"cannot serialize --with object '{key}' ({type(value).__name__}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        (assets / f"{key}.dill").write_bytes(data)
    (directory / MANIFEST).write_text(json.dumps(spec.manifest(), indent=1))


def load(directory: Path) -> Callable[[Any], Any]:
    """Rebuild the transformer function from a written package directory."""
    import dill

    manifest = json.loads((directory / MANIFEST).read_text())
    namespace: dict[str, Any] = {"__name__": "nbmagic_transformer", "__builtins__": builtins}
    for item in manifest["imports"]:
        value: Any = importlib.import_module(item["module"])
        for part in (item["attr"] or "").split(".") if item["attr"] else []:
            value = getattr(value, part)
        namespace[item["name"]] = value
    for key in manifest["assets"]:
        namespace[key] = dill.loads((directory / "assets" / f"{key}.dill").read_bytes())
    flags = __future__.annotations.compiler_flag
    for function in manifest["functions"]:
        code = compile(function["source"], f"<transformer {function['name']}>", "exec", flags=flags, dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - the user's own packaged function
        if function["name"] not in namespace:  # defined under another name (def g ... ; f = g): alias it
            namespace[function["name"]] = namespace[_def_name(function["source"])]
    return namespace[manifest["entry"]]


def _def_name(source: str) -> str:
    node = ast.parse(source).body[0]
    return node.name  # type: ignore[attr-defined]
