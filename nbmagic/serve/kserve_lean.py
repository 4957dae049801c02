"""Import only the parts of KServe a model server runs on.

``import kserve`` runs a package ``__init__`` that also loads the Kubernetes client, Google auth, the
cryptography bindings and a hundred API models (about a third of its import time), none of which a running
model server touches. ``load()`` puts the ``kserve`` package in ``sys.modules`` without running that
``__init__`` and imports the server's own modules (ModelServer, Model, the REST and gRPC servers, the V2
types). The first attribute asked of the package that is not loaded yet (``kserve.KServeClient``, say) runs the
real ``__init__`` then, so code that wants all of KServe still gets it.

Two of those modules (the V2 types and ``kserve.utils.utils``) import pandas only for return annotations and
two helpers a model server on our routes never calls; pandas is a quarter of the import time. They are compiled
with postponed annotations (PEP 563) and their ``pd`` is a stand-in that imports pandas on first use.
"""

from __future__ import annotations
import __future__

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

SERVER_MODULES = (
    "kserve.model_server",
    "kserve.model",
    "kserve.errors",
    "kserve.protocol.infer_type",
    "kserve.protocol.rest.server",
    "kserve.protocol.grpc.server",
)
#: kserve's ``__init__`` does ``from .utils import utils`` (and constants): ``kserve.utils`` is the module
#: ``kserve.utils.utils``, not the package, so ``kserve.utils.get_predict_input`` works
_REBOUND = ("constants", "utils")
_LOCK = threading.RLock()
#: modules that use pandas only in annotations and helpers called on first use
_DEFERRED_PANDAS = ("kserve.protocol.infer_type", "kserve.utils.utils")


def load() -> ModuleType:
    """The ``kserve`` package with the server's modules imported (the whole package if it already was)."""
    with _LOCK:
        package = sys.modules.get("kserve")
        if package is None:
            package = _hollow_package()
        argv, sys.argv = sys.argv, sys.argv[:1]  # kserve.model_server parses sys.argv at import time
        try:
            _import_deferring_pandas()
            for name in SERVER_MODULES:
                importlib.import_module(name)
            if "__getattr__" in vars(package):  # the real __init__ has not run: bind what it binds
                for name in _REBOUND:
                    setattr(package, name, importlib.import_module(f"kserve.{name}.{name}"))
        finally:
            sys.argv = argv
        return package


def _hollow_package() -> ModuleType:
    spec = importlib.util.find_spec("kserve")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'kserve'", name="kserve")
    package = importlib.util.module_from_spec(spec)
    completing = False
    failure: BaseException | None = None

    def complete(attr: str) -> object:
        """Run the package's real ``__init__`` once, then answer ``attr`` from it (a submodule not imported yet
        is left to the import system: ``from . import context`` asks for it before importing it). If that
        ``__init__`` fails, every later attribute asked raises its first error again."""
        nonlocal completing, failure
        with _LOCK:
            if completing or "__getattr__" not in vars(package) or attr.startswith("__") or _submodule(attr):
                raise AttributeError(f"module 'kserve' has no attribute '{attr}'")
            if failure is not None:
                raise failure
            completing = True
            try:
                spec.loader.exec_module(package)  # type: ignore[union-attr]
            except BaseException as exc:
                failure = exc
                raise
            else:
                vars(package).pop("__getattr__", None)
            finally:
                completing = False
        return getattr(package, attr)

    def _submodule(attr: str) -> bool:
        return any(
            (Path(folder) / attr).is_dir() or (Path(folder) / f"{attr}.py").is_file()
            for folder in spec.submodule_search_locations or ()
        )

    package.__getattr__ = complete  # type: ignore[method-assign] - PEP 562: module-level __getattr__
    sys.modules["kserve"] = package
    return package


class _Deferred(ModuleType):
    """Stands for a module not imported yet: the first attribute asked imports it (and answers from it)."""

    def __getattr__(self, attr: str) -> Any:
        real = sys.modules.get(self.__name__)
        if attr.startswith("__") and attr.endswith("__") and (real is None or real is self):
            raise AttributeError(attr)  # introspection (hasattr, pickling, inspect) does not import the module
        if real is self:
            del sys.modules[self.__name__]
        return getattr(self._import(), attr)

    def _import(self) -> ModuleType:
        """The real module, bound in place of this stand-in wherever ``_DEFERRED_PANDAS`` holds it."""
        real = importlib.import_module(self.__name__)
        for name in _DEFERRED_PANDAS:
            module = sys.modules.get(name)
            for key, value in list(vars(module).items()) if module is not None else ():
                if value is self:
                    setattr(module, key, real)
        return real


class _PostponedAnnotations(importlib.machinery.SourceFileLoader):
    """Compiles the module as if it began with ``from __future__ import annotations`` (no bytecode cache: the
    standard one holds the eagerly evaluated form; compiling takes ~10 ms)."""

    def get_code(self, fullname: str) -> Any:
        source = self.get_data(self.path)
        return compile(source, self.path, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)


def _import_deferring_pandas() -> None:
    """Import the modules of ``_DEFERRED_PANDAS`` with a pandas stand-in (when pandas is not imported yet)."""
    if "pandas" in sys.modules or all(name in sys.modules for name in _DEFERRED_PANDAS):
        return
    stand_in = _Deferred("pandas")
    sys.modules["pandas"] = stand_in  # only while these modules run their ``import pandas as pd``
    try:
        for name in _DEFERRED_PANDAS:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
            if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader) or not origin:
                importlib.import_module(name)  # not a plain source file: import it as it is
                continue
            spec.loader = _PostponedAnnotations(name, origin)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, module)
    finally:
        if sys.modules.get("pandas") is stand_in:
            del sys.modules["pandas"]
