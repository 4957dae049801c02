"""Per-step settings: caching, image, packages, and what a cluster step needs.

A step's settings come from ``%%step NAME [options]``; pipeline-wide defaults use the same options and the same
type (``%pipeline_config``), and :func:`merge` combines the two. Every option is checked when it is parsed, so a
malformed value is one clear error naming the option before anything runs. Secret *values* never appear here:
only the names of Kubernetes secrets and keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .. import k8s_names, units
from ..errors import NbMagicError
from ..k8s_names import DNS_LABEL

CPU_RE = re.compile(r"^([0-9]*\.)?[0-9]+m?$")  # what kfp's set_cpu_* accept
MEMORY_RE = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")  # what kfp's set_memory_* accept
ACCELERATOR_RE = re.compile(rf"^{DNS_LABEL}(\.{DNS_LABEL})+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
SECRET_KEY_RE = re.compile(r"^[-._A-Za-z0-9]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
DEFAULT_ACCELERATOR = "nvidia.com/gpu"


class SettingError(NbMagicError):
    """A step or pipeline setting is malformed."""


@dataclass(frozen=True)
class SecretEnv:
    """Key ``key`` of Kubernetes secret ``secret`` exposed as environment variable ``env``."""

    secret: str
    key: str
    env: str


@dataclass(frozen=True)
class SecretFile:
    """Kubernetes secret ``secret`` mounted as files (one per key) under directory ``path``."""

    secret: str
    path: str


@dataclass(frozen=True)
class VolumeMount:
    """An existing PersistentVolumeClaim ``pvc`` mounted at ``path``."""

    pvc: str
    path: str


@dataclass(frozen=True)
class Toleration:
    """A pod toleration: ``key[=value][:effect]`` (operator Equal with a value, Exists without)."""

    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


@dataclass(frozen=True)
class StepSettings:
    """How a step runs; pipeline-wide defaults use the same type. ``None`` / empty means "not set"."""

    cache: bool = True
    image: str | None = None
    packages: tuple[str, ...] = ()
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    accelerator: str | None = None
    accelerator_count: int | None = None
    retries: int | None = None
    retry_backoff: int | None = None  # seconds before the first retry
    timeout: int | None = None  # seconds
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[SecretEnv, ...] = ()
    secret_files: tuple[SecretFile, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    reuse: bool | None = None  # interactive reuse of stored results (None: the pipeline's setting, off by default)
    inputs: tuple[str, ...] = ()  # files whose content joins the step's cache key
    store: str | None = None  # the shared run store's URI (%pipeline_config only)
    store_secret: str | None = None  # Kubernetes secret with the store's credentials (%pipeline_config only)

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def is_default(self) -> bool:
        return self == StepSettings()


# ---------------------------------------------------------------------------------------------------------------
# Parsing and validation of single values; each error names the option.


def memory_bytes(quantity: str) -> int:
    """``2Gi`` -> 2147483648 (for local memory limits)."""
    try:
        return units.memory_bytes(quantity)
    except ValueError:
        raise SettingError(f"--memory: {quantity!r} is not a memory quantity like 512Mi or 2Gi") from None


def cpu_millis(quantity: str) -> float:
    """``500m`` -> 500, ``1.5`` -> 1500."""
    try:
        return units.cpu_millis(quantity)
    except ValueError:
        raise SettingError(f"--cpu: {quantity!r} is not a CPU quantity like 500m, 1 or 1.5") from None


def check_limits(settings: StepSettings) -> StepSettings:
    """Kubernetes refuses a pod whose request is above its limit: say so before anything runs."""
    for request, limit, value, option, limit_option in (
        (settings.cpu_request, settings.cpu_limit, cpu_millis, "--cpu", "--cpu-limit"),
        (settings.memory_request, settings.memory_limit, memory_bytes, "--memory", "--memory-limit"),
    ):
        if request is not None and limit is not None and value(request) > value(limit):
            raise SettingError(
                f"{option} {request} is more than {limit_option} {limit}: a request cannot exceed its limit"
            )
    return settings


def parse_cpu(value: str, option: str = "--cpu") -> str:
    if not CPU_RE.match(value):
        raise SettingError(f"{option}: {value!r} is not a CPU quantity like 500m, 1 or 1.5")
    return value


def parse_memory(value: str, option: str = "--memory") -> str:
    if not MEMORY_RE.match(value):
        raise SettingError(
            f"{option}: {value!r} is not a memory quantity: a whole number with an optional suffix K, M, G, T, Ki, Mi, Gi, Ti (e.g. 512Mi, 2Gi)"
        )
    return value


def parse_duration(value: str, option: str) -> int:
    """``90`` / ``90s`` / ``10m`` / ``1h30m`` / ``2d`` -> whole seconds."""
    try:
        seconds = units.duration_seconds(str(value))
    except ValueError:
        seconds = -1.0
    if seconds < 0 or seconds != int(seconds):
        raise SettingError(f"{option}: {value!r} is not a duration like 30s, 10m, 1h30m or a number of seconds")
    return int(seconds)


def parse_accelerator(value: str, option: str = "--gpu") -> tuple[str, int]:
    """``nvidia.com/gpu=2`` / ``nvidia.com/gpu`` / ``2`` -> (type, count)."""
    kind, sep, count_text = value.partition("=")
    if not sep and kind.isdigit():
        kind, count_text = DEFAULT_ACCELERATOR, kind
    kind = kind.strip()
    if not ACCELERATOR_RE.match(kind):
        raise SettingError(
            f"{option}: accelerator type {kind!r} is not a Kubernetes resource name like vendor.com/name (e.g. nvidia.com/gpu)"
        )
    count_text = count_text.strip() or "1"
    if not count_text.isdigit() or int(count_text) < 1:
        raise SettingError(f"{option}: accelerator count {count_text!r} must be a whole number >= 1")
    return kind, int(count_text)


def parse_retries(value: Any, option: str = "--retries") -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingError(f"{option}: {value!r} is not a whole number") from None
    if number < 0:
        raise SettingError(f"{option}: {number} is negative; use 0 or more retries")
    return number


def parse_env(value: str, option: str = "--env") -> tuple[str, str]:
    name, sep, text = value.partition("=")
    if not sep or not ENV_NAME_RE.match(name):
        raise SettingError(f"{option}: {value!r} is not NAME=VALUE with NAME a valid environment variable name")
    return name, text


def _k8s_name(name: str, what: str, option: str) -> str:
    if not k8s_names.is_subdomain(name):
        raise SettingError(f"{option}: {what} {name!r} is not a Kubernetes name (lower-case letters, digits, - and .)")
    return name


def _absolute(path: str, option: str) -> str:
    if not path.startswith("/") or "\0" in path or any(part == ".." for part in path.split("/")):
        raise SettingError(f"{option}: mount path {path!r} must be an absolute path without '..'")
    return path


def parse_secret(value: str, option: str = "--secret") -> SecretEnv:
    """``NAME:KEY=ENVVAR`` (or ``NAME:KEY``, exposing it as KEY upper-cased)."""
    secret, sep, rest = value.partition(":")
    key, _, env = rest.partition("=")
    if not sep or not key:
        raise SettingError(
            f"{option}: {value!r} names no key; use SECRET:KEY=ENVVAR (e.g. db-creds:password=DB_PASSWORD)"
        )
    _k8s_name(secret, "secret", option)
    if not SECRET_KEY_RE.match(key):
        raise SettingError(f"{option}: secret key {key!r} may only contain letters, digits, '-', '_' and '.'")
    env = env or re.sub(r"[^A-Za-z0-9_]", "_", key).upper()
    if not ENV_NAME_RE.match(env):
        raise SettingError(f"{option}: {env!r} is not a valid environment variable name")
    return SecretEnv(secret, key, env)


def parse_secret_file(value: str, option: str = "--secret-file") -> SecretFile:
    """``NAME:/mount/path``."""
    secret, sep, path = value.partition(":")
    if not sep:
        raise SettingError(f"{option}: {value!r} is not SECRET:/mount/path")
    return SecretFile(_k8s_name(secret, "secret", option), _absolute(path, option))


def parse_volume(value: str, option: str = "--volume") -> VolumeMount:
    """``PVC:/mount/path``."""
    pvc, sep, path = value.partition(":")
    if not sep:
        raise SettingError(f"{option}: {value!r} is not PVC:/mount/path")
    return VolumeMount(_k8s_name(pvc, "PVC", option), _absolute(path, option))


def parse_node_selector(value: str, option: str = "--node-selector") -> tuple[str, str]:
    key, sep, label = value.partition("=")
    if not sep or not k8s_names.is_label_key(key) or not k8s_names.is_label_value(label):
        raise SettingError(f"{option}: {value!r} is not LABEL=VALUE with a valid Kubernetes label")
    return key, label


def parse_toleration(value: str, option: str = "--toleration") -> Toleration:
    """``key[=value][:Effect]``; without a value the operator is Exists."""
    head, _, effect = value.partition(":")
    key, sep, label = head.partition("=")
    if not k8s_names.is_label_key(key) or (sep and not k8s_names.is_label_value(label)):
        raise SettingError(f"{option}: {value!r} is not KEY[=VALUE][:EFFECT] with a valid taint key")
    if effect and effect not in TAINT_EFFECTS:
        raise SettingError(f"{option}: effect {effect!r} must be one of {', '.join(TAINT_EFFECTS)}")
    if sep:
        return Toleration(key, "Equal", label, effect or None)
    return Toleration(key, "Exists", None, effect or None)


def parse_package(value: str, option: str = "--packages") -> str:
    text = value.strip()
    if not text or text.startswith("-") or any(c in text for c in "\n\r\0"):
        raise SettingError(f"{option}: {value!r} is not a pip requirement")
    return text


def parse_input(value: str, option: str = "--inputs") -> str:
    if not value.strip() or "\0" in value:
        raise SettingError(f"{option}: {value!r} is not a file path")
    return value


def parse_image(value: str, option: str = "--image") -> str:
    text = value.strip()
    if not text or any(c.isspace() for c in text):
        raise SettingError(f"{option}: {value!r} is not a container image reference")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Magic arguments (the same list for %%step and %pipeline_config).

SETTING_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--cpu",), {"metavar": "QTY", "help": "CPU request, e.g. 500m or 2 (cluster only)"}),
    (("--cpu-limit",), {"metavar": "QTY", "help": "CPU limit, e.g. 1 or 1500m (cluster only)"}),
    (("--memory",), {"metavar": "QTY", "help": "memory request, e.g. 512Mi or 2Gi (cluster only)"}),
    (
        ("--memory-limit",),
        {"metavar": "QTY", "help": "memory limit, e.g. 4Gi; also enforced on local runs (the step is stopped)"},
    ),
    (
        ("--gpu",),
        {
            "metavar": "TYPE=N",
            "help": "accelerators: vendor.com/name=COUNT, e.g. nvidia.com/gpu=1 (a bare number means nvidia.com/gpu; cluster only)",
        },
    ),
    (("--retries",), {"metavar": "N", "help": "retry a failing step N times (local and cluster)"}),
    (
        ("--retry-backoff",),
        {"metavar": "DURATION", "help": "wait before the first retry, e.g. 30s or 2m; doubles after each retry"},
    ),
    (("--timeout",), {"metavar": "DURATION", "help": "stop the step after e.g. 90s, 10m, 1h30m (local and cluster)"}),
    (
        ("--env",),
        {"action": "append", "metavar": "NAME=VALUE", "help": "environment variable (repeatable; not for secrets)"},
    ),
    (
        ("--secret",),
        {
            "action": "append",
            "metavar": "SECRET:KEY=ENVVAR",
            "help": "expose key KEY of Kubernetes secret SECRET as $ENVVAR (repeatable); locally $ENVVAR is taken from the kernel's environment",
        },
    ),
    (
        ("--secret-file",),
        {
            "action": "append",
            "metavar": "SECRET:/PATH",
            "help": "mount Kubernetes secret SECRET as files under /PATH (repeatable; cluster only)",
        },
    ),
    (
        ("--volume",),
        {
            "action": "append",
            "metavar": "PVC:/PATH",
            "help": "mount existing PersistentVolumeClaim PVC at /PATH (repeatable; cluster only)",
        },
    ),
    (
        ("--node-selector",),
        {
            "action": "append",
            "metavar": "LABEL=VALUE",
            "help": "schedule on nodes with this label (repeatable; cluster only)",
        },
    ),
    (
        ("--toleration",),
        {
            "action": "append",
            "metavar": "KEY[=VALUE][:EFFECT]",
            "help": "tolerate a node taint, e.g. gpu=true:NoSchedule (repeatable; cluster only)",
        },
    ),
    (("--image",), {"metavar": "IMAGE", "help": "container image for the step (default: python:<kernel's version>)"}),
    (
        ("--packages",),
        {
            "nargs": "+",
            "metavar": "REQ",
            "help": "extra pip requirements, e.g. xgboost==2.1 (imported packages are pinned automatically)",
        },
    ),
    (("--no-cache",), {"action": "store_true", "default": False, "help": "always re-run this step (no cache)"}),
    (
        ("--reuse",),
        {
            "action": "store_true",
            "default": False,
            "help": "when the cell runs in the notebook, load its results from the store if code and inputs are unchanged (prints replayed; files and plots not made again)",
        },
    ),
    (("--no-reuse",), {"action": "store_true", "default": False, "help": "always run the cell in the notebook"}),
    (
        ("--inputs",),
        {
            "nargs": "+",
            "metavar": "PATH",
            "help": "files or folders the step reads: their content hash joins the cache key, so a change means the step runs again (in the notebook and in runs)",
        },
    ),
]


# Only %pipeline_config takes these: where the whole pipeline records its runs and values.
STORE_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--store",),
        {
            "metavar": "URI",
            "help": "shared run store: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or file:///PATH (sets $NBMAGIC_STORE_URI in this kernel;"
            " compiled pipelines write there too)",
        },
    ),
    (
        ("--store-secret",),
        {
            "metavar": "SECRET",
            "help": "Kubernetes secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,"
            " NBMAGIC_STORE_KEY) compiled steps get as environment variables; for a gs:// store, a service-account key"
            " file under key.json, mounted and named by GOOGLE_APPLICATION_CREDENTIALS",
        },
    ),
]


def _merge_keyed(base: Iterable[Any], extra: Iterable[Any], key) -> tuple[Any, ...]:
    """Items of ``base`` then ``extra``; an item of ``extra`` replaces one of ``base`` with the same key."""
    merged: dict[Any, Any] = {key(item): item for item in base}
    for item in extra:
        merged.pop(key(item), None)
        merged[key(item)] = item
    return tuple(merged.values())


def _package_key(requirement: str) -> str:
    from ..packages import requirement_name  # standard library only

    return requirement_name(requirement)


_KEYS = {
    "packages": _package_key,
    "env": lambda item: item[0],
    "secret_env": lambda item: item.env,
    "secret_files": lambda item: item.path,
    "volumes": lambda item: item.path,
    "node_selector": lambda item: item[0],
    "tolerations": lambda item: item,
    "inputs": lambda item: item,
}


def settings_from_args(namespace: Any, base: StepSettings | None = None) -> StepSettings:
    """Apply parsed ``SETTING_ARGUMENTS`` (an argparse namespace) on top of ``base``; validates each option."""
    get = lambda name: getattr(namespace, name, None)  # noqa: E731
    changes: dict[str, Any] = {}
    if get("no_cache"):
        changes["cache"] = False
    if get("reuse") and get("no_reuse"):
        raise SettingError("--reuse and --no-reuse cannot both be given")
    if get("reuse") or get("no_reuse"):
        changes["reuse"] = bool(get("reuse"))
    if get("inputs"):
        changes["inputs"] = tuple(dict.fromkeys(parse_input(p) for p in get("inputs")))
    if get("image") is not None:
        changes["image"] = parse_image(get("image"))
    if get("packages"):
        changes["packages"] = tuple(parse_package(p) for p in get("packages"))
    if get("cpu") is not None:
        changes["cpu_request"] = parse_cpu(get("cpu"), "--cpu")
    if get("cpu_limit") is not None:
        changes["cpu_limit"] = parse_cpu(get("cpu_limit"), "--cpu-limit")
    if get("memory") is not None:
        changes["memory_request"] = parse_memory(get("memory"), "--memory")
    if get("memory_limit") is not None:
        changes["memory_limit"] = parse_memory(get("memory_limit"), "--memory-limit")
    if get("gpu") is not None:
        changes["accelerator"], changes["accelerator_count"] = parse_accelerator(get("gpu"))
    if get("retries") is not None:
        changes["retries"] = parse_retries(get("retries"))
    if get("retry_backoff") is not None:
        changes["retry_backoff"] = parse_duration(get("retry_backoff"), "--retry-backoff")
    if get("timeout") is not None:
        changes["timeout"] = parse_duration(get("timeout"), "--timeout")
        if changes["timeout"] <= 0:
            raise SettingError(f"--timeout: {get('timeout')!r} must be longer than 0 seconds")
    for option, field, parse in (  # repeatable options: each value parsed, in the order given
        ("env", "env", parse_env),
        ("secret", "secret_env", parse_secret),
        ("secret_file", "secret_files", parse_secret_file),
        ("volume", "volumes", parse_volume),
        ("node_selector", "node_selector", parse_node_selector),
        ("toleration", "tolerations", parse_toleration),
    ):
        if get(option):
            changes[field] = tuple(parse(v) for v in get(option))
    if get("store") is not None:
        from .. import store_uri

        changes["store"] = str(store_uri.parse(get("store"), "--store"))
    if get("store_secret") is not None:
        changes["store_secret"] = _k8s_name(get("store_secret"), "secret", "--store-secret")
    return check_limits(merge(base or StepSettings(), StepSettings(**changes) if changes else StepSettings()))


def merge(pipeline_defaults: StepSettings | None, step: StepSettings) -> StepSettings:
    """The settings a step runs with: its own, falling back to the pipeline's defaults.

    Single values: the step's wins when set. Lists (packages, env, secrets, volumes, node selector, tolerations):
    the defaults plus the step's, the step's replacing a default with the same name/path. Caching is on only when
    both allow it.
    """
    if pipeline_defaults is None:
        return step
    changes: dict[str, Any] = {"cache": pipeline_defaults.cache and step.cache}
    for f in fields(StepSettings):
        if f.name == "cache":
            continue
        ours, theirs = getattr(step, f.name), getattr(pipeline_defaults, f.name)
        if f.name in _KEYS:
            changes[f.name] = _merge_keyed(theirs, ours, _KEYS[f.name])
        else:
            changes[f.name] = ours if ours is not None else theirs
    if step.accelerator is not None:  # type and count travel together
        changes["accelerator_count"] = step.accelerator_count
    return replace(step, **changes)


def cluster_only(settings: StepSettings) -> list[str]:
    """Settings that a local run cannot honour, one readable line each (shown once, never silently dropped)."""
    found: list[str] = []
    if settings.accelerator:
        found.append(f"accelerator {settings.accelerator} x{settings.accelerator_count or 1}")
    for secret in settings.secret_env:
        found.append(
            f"secret {secret.secret}:{secret.key} as ${secret.env} (set ${secret.env} in the kernel for a local stand-in)"
        )
    for secret_file in settings.secret_files:
        found.append(f"secret {secret_file.secret} mounted at {secret_file.path}")
    for volume in settings.volumes:
        found.append(f"PVC {volume.pvc} mounted at {volume.path}")
    for key, value in settings.node_selector:
        found.append(f"node selector {key}={value}")
    for tol in settings.tolerations:
        found.append(
            "toleration "
            + tol.key
            + (f"={tol.value}" if tol.value is not None else "")
            + (f":{tol.effect}" if tol.effect else "")
        )
    if settings.cpu_request or settings.cpu_limit:
        found.append(
            "cpu "
            + "/".join(f"{k} {v}" for k, v in (("request", settings.cpu_request), ("limit", settings.cpu_limit)) if v)
        )
    if settings.memory_request:
        found.append(f"memory request {settings.memory_request}")
    if settings.image:
        found.append(f"image {settings.image} (local runs use the kernel's environment)")
    return found


def local_env(settings: StepSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """Environment a local run adds: ``--env`` values plus local stand-ins for secrets found in ``environ``."""
    env = {secret.env: environ[secret.env] for secret in settings.secret_env if secret.env in environ}
    env.update(settings.env)
    return env


__all__ = [
    "SETTING_ARGUMENTS",
    "SecretEnv",
    "SecretFile",
    "SettingError",
    "StepSettings",
    "Toleration",
    "VolumeMount",
    "check_limits",
    "cluster_only",
    "local_env",
    "memory_bytes",
    "merge",
    "settings_from_args",
]


def merged_plan(plan: Any, defaults: StepSettings | None) -> Any:
    """``plan`` with the pipeline-wide settings ``defaults`` merged under each step's own."""
    for step in plan.steps:
        plan = plan.with_settings(step.name, merge(defaults, step.settings))
    return plan
