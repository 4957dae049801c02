"""Installed distributions behind imported modules, pinned to this environment's versions (compiled steps, cache keys, lineage)."""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import sys
from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

# The KFP launcher installs kfp itself; listing a "kfp*" requirement would stop kfp from injecting its own install.
SKIPPED = {"kfp", "kfp-pipeline-spec", "kfp-server-api", "kfp-kubernetes", "nbmagic"}
# What the marshaller may need for values of a given module's types (besides dill for everything else).
COMPANIONS = {"pandas": ("pyarrow",), "scikit-learn": ("joblib",)}
# dill for the generic fallback; xxhash because manifests hashed with xxh3 need it to load
ALWAYS = ("dill", "xxhash")


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return canonicalize_name(name.strip())


def requirement_name(requirement: str) -> str:
    """``scikit-learn[extra]>=1.4; python_version>'3'`` -> ``scikit-learn`` (normalized).

    A URL or a path (``git+https://...``, ``./lib``, ``/wheels/x.whl``) names no package: it is its own key."""
    text = requirement.strip()
    try:
        return normalize(Requirement(text).name)
    except InvalidRequirement:
        return text


@functools.lru_cache(maxsize=1)
def _module_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.cache
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def distributions_for(modules: Iterable[str]) -> list[str]:
    """Installed distributions providing these top-level modules (standard library and unknown modules skipped)."""
    found: dict[str, None] = {}
    for module in modules:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names:
            continue
        # scanning every installed distribution takes ~0.5 s: only done (once) when a module needs it
        for dist in _module_distributions().get(top, []):
            found[dist] = None
            for companion in COMPANIONS.get(normalize(dist), ()):
                if _version(companion):
                    found[companion] = None
    for dist in ALWAYS:
        if _version(dist):
            found[dist] = None
    return [d for d in found if normalize(d) not in SKIPPED]


def pinned(modules: Iterable[str]) -> list[str]:
    """``['numpy==2.1.0', 'scikit-learn==1.5.2', 'dill==0.3.9']`` for the distributions behind ``modules``."""
    return [f"{dist}=={_version(dist)}" for dist in distributions_for(modules) if _version(dist)]


def combine(*groups: Iterable[str]) -> list[str]:
    """Requirements from several sources; a later group's requirement replaces an earlier one for the same package."""
    merged: dict[str, str] = {}
    for group in groups:
        for requirement in group:
            key = requirement_name(requirement)
            merged.pop(key, None)
            merged[key] = requirement.strip()
    return list(merged.values())
