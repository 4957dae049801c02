"""PipelinePlan -> the source of a readable KFP DSL module (components, settings calls, @dsl.pipeline).

The same module text is what ``compile_pipeline`` imports and compiles, and what ``export_dsl`` writes for review,
so the exported file and the YAML cannot drift apart. Code is generated from data: names are checked identifiers,
every value goes through :func:`literals.literal`, and the result is parsed with ``ast`` before it is used.
"""

from __future__ import annotations

import ast
import builtins
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import packages, store_uri
from ..errors import PipelineError
from ..pipeline.model import PipelinePlan, StepPlan
from ..pipeline.settings import SettingError, StepSettings, check_limits, merge
from ..runtime.executor import COMMAND as EXECUTOR_COMMAND
from ..runtime.executor import SPEC_VERSION
from ..runtime.files import MissingInput, file_hashes
from ..runtime.step import uses_ipython
from .literals import literal

PIPELINE_FUNCTION = "pipeline"
RUNTIME_ARG = "nbmagic_runtime"  # the component input (an artifact) carrying the zipped runtime
RUNTIME_COMPONENT = "nbmagic_runtime_package"  # the once-per-run component that writes that artifact
RUNTIME_TASK = "nbmagic_runtime_task"
STORE_RUN_ARG = "nbmagic_store_run"  # the component input that gets the KFP run's id (the run's id in the store)
# --store-secret: keys a compiled step reads from the secret (the first two required, the others if present)
STORE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STORE_SECRET_OPTIONAL = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "NBMAGIC_STORE_KEY")
# --store-secret with a gs:// store: the secret holds a service-account key file under GCS_KEY_FILE, mounted as a
# file that $GOOGLE_APPLICATION_CREDENTIALS names (and optionally these keys, as environment variables)
GCS_KEY_FILE = "key.json"
GCS_SECRET_MOUNT = "/var/run/secrets/nbmagic-store"
GCS_SECRET_OPTIONAL = ("NBMAGIC_STORE_KEY", "GOOGLE_CLOUD_PROJECT")
RUNTIME_OUTPUT = "runtime"
IMAGE_NOTE = (
    "steps in an image that has nbmagic are container components running its step executor\n"
    f"({' '.join(EXECUTOR_COMMAND)}: the step's interface, cell and prelude are its arguments)"
)
OUTPUTS_CLASS = "PipelineOutputs"
METRICS_ARG = "metrics"
# Names the generated module defines or imports; step functions and parameters must not shadow them.
MODULE_NAMES = {
    "compiler",
    "dsl",
    "kubernetes",
    "kfp",
    "sys",
    "Any",
    "NamedTuple",
    "Artifact",
    "Input",
    "Metrics",
    "Output",
    "nbmagic_run",
    RUNTIME_ARG,
    RUNTIME_COMPONENT,
    RUNTIME_TASK,
    STORE_RUN_ARG,
    PIPELINE_FUNCTION,
    OUTPUTS_CLASS,
}


def default_image() -> str:
    """``python:<major>.<minor>`` of this kernel, so compiled steps run the Python the notebook used."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}"


def kfp_pipeline_name(name: str) -> str:
    """A name KFP accepts (``^[a-z0-9][a-z0-9-]{0,127}$``) from the plan's name."""
    chars = [c if (c.isascii() and c.isalnum()) else "-" for c in name.lower()]
    out = "".join(chars).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out[:128].strip("-") or "pipeline"


def metrics_output_name(step: str) -> str:
    """The pipeline output that carries ``step``'s metrics (a ``Metrics`` artifact)."""
    return f"{step}_metrics"


def _reserved() -> set[str]:
    import typing

    import kfp.dsl

    # The component's ephemeral module does `from kfp.dsl import *` and `from typing import *`.
    return MODULE_NAMES | set(getattr(kfp.dsl, "__all__", ())) | set(typing.__all__) | set(dir(builtins))


class _Names:
    """Hands out identifiers that do not clash with each other or with reserved names."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)

    def claim(self, wanted: str, suffix: str = "_") -> str:
        name = wanted if wanted not in self.taken else wanted + suffix
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name


@dataclass
class _Component:
    step: StepPlan
    function: str  # Python function name of the component
    task: str  # variable holding its task in the pipeline function
    settings: StepSettings
    image: str
    packages: list[str]
    embeds_runtime: bool  # the runtime travels with the pipeline (the image does not have it)
    params: dict[str, str] = field(default_factory=dict)  # pipeline parameter -> component argument
    inputs: dict[str, str] = field(default_factory=dict)  # variable -> component argument
    outputs: dict[str, str] = field(default_factory=dict)  # variable -> component argument
    metrics: str | None = None  # component argument for the Metrics artifact
    watch: tuple[str, ...] = ()  # inputs to check for changes in place (see ``stale_readers``)
    files: dict[str, str] = field(default_factory=dict)  # --inputs path -> its content hash when compiled


EXACT_INT = 2**53  # KFP carries parameter defaults as protobuf numbers (doubles): larger ints change


def check_kfp_value(name: str, value: Any) -> None:
    """Refuse a parameter default a KFP pipeline cannot carry exactly (inf/nan, ints beyond 2**53)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise PipelineError(
            f"parameter {name!r} is {value} (a float literal beyond 1.8e308 overflows to inf): "
            "a KFP pipeline parameter must be a finite number; use a smaller value"
        )
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_INT:
        raise PipelineError(
            f"parameter {name!r} = {value} is beyond 2**53: KFP stores numbers as doubles and would change it "
            f'to {float(value):.17g}; pass it as a str parameter ("{value}") and convert it in the step'
        )


def _plan_components(
    plan: PipelinePlan,
    image: str | None,
    extra_packages: tuple[str, ...],
    defaults: StepSettings | None,
    runtime_images: frozenset[str],
) -> list[_Component]:
    reserved = _reserved()
    for parameter in plan.parameters.values():
        check_kfp_value(parameter.name, parameter.default)
    clashes = sorted(set(plan.parameters) & MODULE_NAMES)
    if clashes:
        raise PipelineError(f"parameter {clashes[0]!r} shadows a name the compiled pipeline uses; rename it")
    module_names = _Names(reserved | set(plan.parameters))
    pipeline_locals = _Names(reserved | set(plan.parameters))
    found: list[_Component] = []
    shared = store_uri.configured()  # the kernel's shared store, unless %pipeline_config --store names one
    ancestors: dict[str, set[str]] = {}  # steps come in topological order: each one's from its upstream's
    for step in plan.steps:
        ancestors[step.name] = set(step.upstream).union(*(ancestors.get(u, ()) for u in step.upstream))
        function = module_names.claim(step.name, "_step")
        pipeline_locals.taken.add(function)
        settings = merge(defaults, step.settings) if defaults is not None else step.settings
        if settings.store is None and shared is not None:
            settings = replace(settings, store=str(shared))
        try:
            check_limits(settings)
        except SettingError as exc:
            raise PipelineError(f"step {step.name!r}: {exc}") from None
        # an input's type comes from whatever library made it, anywhere upstream (a step computing
        # `data * 2` passes on a numpy array without importing numpy): install the ancestors' libraries too
        modules = list(step.modules)
        if uses_ipython(step.cell.code, step.prelude):
            modules.append("IPython")  # %time / !cmd lines in the cell run through an IPython shell
        if (settings.store or "").startswith("s3://"):
            modules.append("boto3")  # the step records itself in the shared store
        store_pins = _gcs_pins() if (settings.store or "").startswith("gs://") else []
        for source in plan.steps:
            if source.name in ancestors[step.name]:
                modules += source.modules
        chosen = settings.image or image or plan.image or default_image()
        pins = packages.pinned(dict.fromkeys(modules))
        if chosen in runtime_images:  # the image has nbmagic and what its runtime needs
            pins = [
                p for p in pins if packages.requirement_name(p) not in packages.ALWAYS or p.split("==")[0] in modules
            ]
        requirements = packages.combine(pins, store_pins, plan.packages, extra_packages, settings.packages)
        try:
            # in the component's code, so KFP's cache key changes with the file's content (sha256: any image checks it)
            files = file_hashes(tuple(settings.inputs or ()), "sha256")
        except MissingInput as missing:
            raise PipelineError(f"step {step.name!r} --inputs {missing}: no such file or folder") from None
        found.append(
            _Component(
                step=step,
                function=function,
                task="",
                settings=settings,
                image=chosen,
                packages=requirements,
                embeds_runtime=chosen not in runtime_images,
                files=files,
            )
        )
    # a metric travels as an artifact only when a later step reads it
    read_later: dict[str, set[str]] = {}
    for step in plan.steps:
        for var, source in step.inputs.items():
            read_later.setdefault(source, set()).add(var)
    readers = _readers(plan)
    for comp in found:
        comp.watch = stale_readers(plan, comp.step.name, readers)
        read_later_here = read_later.get(comp.step.name, set())
        comp.task = pipeline_locals.claim(f"{comp.function}_task")
        args = _Names(reserved)
        for name in comp.step.parameters:
            comp.params[name] = args.claim(name)
        for var in comp.step.inputs:
            comp.inputs[var] = args.claim(f"in_{var}")
        for var in comp.step.outputs:
            if var in read_later_here or var not in comp.step.metrics:
                comp.outputs[var] = args.claim(f"out_{var}")
        if comp.step.metrics:
            comp.metrics = args.claim(METRICS_ARG)
    return found


def stale_readers(plan: PipelinePlan, name: str, readers: dict | None = None) -> tuple[str, ...]:
    """Inputs of step ``name`` that a later step (in notebook order) reads from an earlier producer: were ``name`` to
    change one in place unseen, that step would get the old value, so the component checks it did not.

    ``readers``: :func:`_readers` of ``plan``, when the caller asks for every step (built once, not per step)."""
    readers = _readers(plan) if readers is None else readers
    step = plan.step(name)
    index = step.cell.index
    found = {
        var
        for var in step.inputs
        for reader, source, produced in readers.get(var, ())
        if reader > index and source != name and produced < index
    }
    return tuple(sorted(found))


def _readers(plan: PipelinePlan) -> dict[str, list[tuple[int, str, int]]]:
    """Variable -> (reader's cell index, producer, producer's cell index) for every step input of ``plan``."""
    cells = {s.name: s.cell.index for s in plan.steps}
    found: dict[str, list[tuple[int, str, int]]] = {}
    for step in plan.steps:
        for var, source in step.inputs.items():
            found.setdefault(var, []).append((step.cell.index, source, cells[source]))
    return found


def _def_line(function: str, signature: list[str], returns: str = "") -> list[str]:
    """``def f(a, b):`` on one line when short, else one argument per line."""
    line = f"def {function}({', '.join(signature)}){returns}:"
    if len(line) <= 110:
        return [line]
    return [f"def {function}("] + [f"    {arg}," for arg in signature] + [f"){returns}:"]


def _signature(comp: _Component, plan: PipelinePlan) -> list[str]:
    signature = [f"{RUNTIME_ARG}: Input[Artifact]"] if comp.embeds_runtime else []
    signature += [f"{arg}: {plan.parameters[name].type}" for name, arg in comp.params.items()]
    signature += [f"{arg}: Input[Artifact]" for arg in comp.inputs.values()]
    signature += [f"{arg}: Output[Artifact]" for arg in comp.outputs.values()]
    if comp.metrics:
        signature.append(f"{comp.metrics}: Output[Metrics]")
    if comp.settings.store:
        signature.append(f"{STORE_RUN_ARG}: str")
    return signature


def _store_target(comp: _Component, plan: PipelinePlan) -> dict[str, Any]:
    """Where and as what a step records itself in the shared store (the run id comes from KFP at run time); with
        a gs:// store and ``--store-secret``, the key file the step checks for before its cell runs.

        ``cache``: whether the step may be taken from the store's cache (``runtime.podcache``): not with caching off,
        a secret, an ``--after`` edge either way (ordering that carries no value means files or services the key
        cannot see), or nothing to produce. ``env``: its ``--env`` names, whose values its key covers; ``image``: its
    image, which its key covers too."""
    s = comp.settings
    followed = any(comp.step.name in other.explicit_after for other in plan.steps)
    cache = bool(
        s.cache
        and not (s.secret_env or s.secret_files or followed or comp.step.explicit_after)
        and (comp.outputs or comp.metrics)
    )
    target: dict[str, Any] = {
        "uri": comp.settings.store,
        "pipeline": plan.name,
        "notebook": Path(plan.notebook).name if plan.notebook else None,
        "steps": [s.name for s in plan.steps],
        "dag": {s.name: list(s.upstream) for s in plan.steps},
        "cache": cache,
        "image": comp.image,  # in the step's key in the store's cache
    }
    if comp.settings.secret_env or comp.settings.secret_files:  # names and paths only: values kept out in the pod
        target["secret_env"] = [secret.env for secret in comp.settings.secret_env]
        target["secret_files"] = [secret.path for secret in comp.settings.secret_files]
    if s.env:
        target["env"] = sorted({name for name, _ in s.env})
    if comp.settings.store_secret and (comp.settings.store or "").startswith("gs://"):
        target.update(key_file=f"{GCS_SECRET_MOUNT}/{GCS_KEY_FILE}", secret=comp.settings.store_secret)
    return target


def _container_source(comp: _Component, plan: PipelinePlan) -> list[str]:
    """A step in an image that has nbmagic: a container component whose command is nbmagic's step executor and
    whose arguments are data (the step's interface as JSON, then its cell and prelude as plain text)."""
    step = comp.step
    spec: dict = {"version": SPEC_VERSION, "step": step.name, "label": step.cell.label}
    if comp.params:
        spec["parameters"] = {name: [arg, plan.parameters[name].type] for name, arg in comp.params.items()}
    if comp.inputs:
        spec["inputs"] = comp.inputs
    if comp.outputs:
        spec["outputs"] = comp.outputs
    if comp.metrics:
        spec["metrics"] = comp.metrics
        spec["metric_names"] = list(step.metrics)
    watch = comp.watch
    if watch:
        spec["watch"] = list(watch)
    if comp.files:  # in the container's arguments, so KFP's cache key follows the file
        spec["files"] = comp.files
    if comp.packages:
        spec["packages"] = comp.packages
    if comp.settings.store:
        spec["store"] = _store_target(comp, plan)
        spec["store_run"] = STORE_RUN_ARG
    return [
        "@dsl.container_component",
        *_def_line(comp.function, _signature(comp, plan)),
        "    return dsl.ContainerSpec(",
        f"        image={literal(comp.image)},",
        f"        command={literal(EXECUTOR_COMMAND)},",
        "        args=[",
        "            dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER,",
        f"            {literal(json.dumps(spec, separators=(',', ':')))},",
        f"            {literal(step.cell.code)},",
        f"            {literal(step.prelude)},",
        "        ],",
        "    )",
    ]


def _component_source(comp: _Component, plan: PipelinePlan) -> list[str]:
    if not comp.embeds_runtime:
        return _container_source(comp, plan)
    step = comp.step
    signature = _signature(comp, plan)
    lines = [
        "@dsl.component(",
        f"    base_image={literal(comp.image)},",
        f"    packages_to_install={literal(comp.packages)},",
        ")",
        *_def_line(comp.function, signature),
        "    import sys",
        "",
        f"    sys.path.insert(0, {RUNTIME_ARG}.path)  # nbmagic's runtime package, a zip",
        "    from nbmagic.runtime.component import nbmagic_run",
        "",
        "    nbmagic_run(",
        f"        step={literal(step.name)},",
        f"        label={literal(step.cell.label)},",
        f"        code={literal(step.cell.code)},",
        f"        prelude={literal(step.prelude)},",
        "        parameters={" + ", ".join(f"{literal(n)}: {a}" for n, a in comp.params.items()) + "},",
        "        inputs={" + ", ".join(f"{literal(v)}: {a}" for v, a in comp.inputs.items()) + "},",
        "        outputs={" + ", ".join(f"{literal(v)}: {a}" for v, a in comp.outputs.items()) + "},",
    ]
    if comp.metrics:
        lines += [f"        metric_names={literal(tuple(step.metrics))},", f"        metrics={comp.metrics},"]
    watch = comp.watch
    if watch:
        lines.append(f"        watch={literal(watch)},")
    if comp.files:
        lines.append(f"        files={literal(comp.files)},")
    if comp.settings.store:
        lines.append(f'        store={{**{literal(_store_target(comp, plan))}, "run": {STORE_RUN_ARG}}},')
    lines.append("    )")
    return lines


def _settings_calls(comp: _Component) -> list[str]:
    """Task method calls and kfp-kubernetes calls for a step's settings."""
    s, task = comp.settings, comp.task
    calls = [f"{task}.set_display_name({literal(comp.step.name)})"]
    # a step that produces metrics always runs on a cluster: a KFP cache hit would skip the code that
    # prints the metric values the run (and a Katib trial) reads back from the step's log
    # with a shared run store, neither: a cached step would record nothing there, and the run would stay
    # "running" in every kernel for good; the step takes its cache hits from the store instead (runtime.podcache)
    if not s.cache or comp.metrics or s.store:
        calls.append(f"{task}.set_caching_options(False)")
    for method, value in (
        ("set_cpu_request", s.cpu_request),
        ("set_cpu_limit", s.cpu_limit),
        ("set_memory_request", s.memory_request),
        ("set_memory_limit", s.memory_limit),
    ):
        if value is not None:
            calls.append(f"{task}.{method}({literal(value)})")
    if s.accelerator:
        calls.append(f"{task}.set_accelerator_type({literal(s.accelerator)})")
        calls.append(f"{task}.set_accelerator_limit({literal(s.accelerator_count or 1)})")
    if s.retries:
        backoff = f", backoff_duration={literal(f'{s.retry_backoff}s')}" if s.retry_backoff is not None else ""
        calls.append(f"{task}.set_retry(num_retries={literal(s.retries)}{backoff})")
    for name, value in s.env:
        calls.append(f"{task}.set_env_variable({literal(name)}, {literal(value)})")
    if s.timeout:
        calls.append(f"kubernetes.set_timeout({task}, seconds={literal(s.timeout)})")
    by_secret: dict[str, dict[str, str]] = {}
    for secret in s.secret_env:
        by_secret.setdefault(secret.secret, {})[secret.key] = secret.env
    for name, key_to_env in by_secret.items():
        calls.append(
            f"kubernetes.use_secret_as_env({task}, secret_name={literal(name)}, secret_key_to_env={literal(key_to_env)})"
        )
    if s.store_secret and (s.store or "").startswith("gs://"):  # a key file, named by GOOGLE_APPLICATION_CREDENTIALS
        mount = literal(GCS_SECRET_MOUNT)
        calls.append(
            f"kubernetes.use_secret_as_volume({task}, secret_name={literal(s.store_secret)}, mount_path={mount})"
        )
        calls.append(
            f"{task}.set_env_variable({literal('GOOGLE_APPLICATION_CREDENTIALS')},"
            f" {literal(GCS_SECRET_MOUNT + '/' + GCS_KEY_FILE)})"
        )
        calls.append(
            f"kubernetes.use_secret_as_env({task}, secret_name={literal(s.store_secret)},"
            f" secret_key_to_env={literal({k: k for k in GCS_SECRET_OPTIONAL})}, optional=True)"
        )
    elif s.store_secret:
        for keys, optional in ((STORE_SECRET_KEYS, ""), (STORE_SECRET_OPTIONAL, ", optional=True")):
            calls.append(
                f"kubernetes.use_secret_as_env({task}, secret_name={literal(s.store_secret)},"
                f" secret_key_to_env={literal({k: k for k in keys})}{optional})"
            )
    for secret_file in s.secret_files:
        calls.append(
            f"kubernetes.use_secret_as_volume({task}, secret_name={literal(secret_file.secret)}, mount_path={literal(secret_file.path)})"
        )
    for volume in s.volumes:
        calls.append(f"kubernetes.mount_pvc({task}, pvc_name={literal(volume.pvc)}, mount_path={literal(volume.path)})")
    for key, value in s.node_selector:
        calls.append(f"kubernetes.add_node_selector({task}, label_key={literal(key)}, label_value={literal(value)})")
    for tol in s.tolerations:
        args = [f"key={literal(tol.key)}", f"operator={literal(tol.operator)}"]
        if tol.value is not None:
            args.append(f"value={literal(tol.value)}")
        if tol.effect:
            args.append(f"effect={literal(tol.effect)}")
        calls.append(f"kubernetes.add_toleration({task}, {', '.join(args)})")
    return calls


def _gcs_pins() -> list[str]:
    """google-cloud-storage at the version installed here (a step on a gs:// store records itself there)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [f"google-cloud-storage=={version('google-cloud-storage')}"]
    except PackageNotFoundError:
        return ["google-cloud-storage"]


def _uses_kubernetes(s: StepSettings) -> bool:
    return bool(
        s.timeout or s.secret_env or s.secret_files or s.volumes or s.node_selector or s.tolerations or s.store_secret
    )


def _pipeline_source(plan: PipelinePlan, comps: list[_Component]) -> list[str]:
    embedded = any(c.embeds_runtime for c in comps)
    by_step = {c.step.name: c for c in comps}
    metric_steps = [c for c in comps if c.metrics]
    params = []
    for p in plan.parameters.values():
        default = float(p.default) if p.type == "float" else p.default
        params.append(f"{p.name}: {p.type} = {literal(default)}")
    returns = f" -> {OUTPUTS_CLASS}" if metric_steps else ""
    # the notebook's name, not this machine's path to it
    description = f"Compiled by nbmagic from {Path(plan.notebook).name}." if plan.notebook else "Compiled by nbmagic."
    lines = [
        f"@dsl.pipeline(name={literal(kfp_pipeline_name(plan.name))}, description={literal(description)})",
        *_def_line(PIPELINE_FUNCTION, params, returns),
    ]
    if embedded:
        lines += [
            f"    {RUNTIME_TASK} = {RUNTIME_COMPONENT}()",
            f"    {RUNTIME_TASK}.set_display_name('nbmagic runtime')",
            "",
        ]
    for comp in comps:
        step = comp.step
        args = [f"{RUNTIME_ARG}={RUNTIME_TASK}.outputs[{literal(RUNTIME_OUTPUT)}]"] if comp.embeds_runtime else []
        args += [f"{arg}={name}" for name, arg in comp.params.items()]
        args += [
            f"{arg}={by_step[step.inputs[var]].task}.outputs[{literal(by_step[step.inputs[var]].outputs[var])}]"
            for var, arg in comp.inputs.items()
        ]
        if comp.settings.store:
            args.append(f"{STORE_RUN_ARG}=dsl.PIPELINE_JOB_ID_PLACEHOLDER")
        call = f"    {comp.task} = {comp.function}({', '.join(args)})"
        if len(call) > 110:
            call = "\n".join([f"    {comp.task} = {comp.function}(", *(f"        {a}," for a in args), "    )"])
        lines.append(call)
        data_sources = set(step.inputs.values())
        after = [by_step[s].task for s in step.upstream if s not in data_sources]
        if after:
            lines.append(f"    {comp.task}.after({', '.join(after)})")
        lines += [f"    {call}" for call in _settings_calls(comp)]
        lines.append("")
    if metric_steps:
        fields_ = ", ".join(
            f"{metrics_output_name(c.step.name)}={c.task}.outputs[{literal(c.metrics)}]" for c in metric_steps
        )
        lines.append(f"    return {OUTPUTS_CLASS}({fields_})")
    return lines


def _runtime_component(runtime: str, image: str, width: int = 100) -> list[str]:
    """The component that writes nbmagic's runtime package (zip, base64 in lines of ``width``) as an artifact.

    It runs once per run; every step whose image lacks the runtime takes the artifact as an input, which KFP's
    launcher downloads, so the package is in the pipeline (and in the run's Workflow) once, not once per step.
    """
    chunks = [runtime[i : i + width] for i in range(0, len(runtime), width)] or [""]
    return [
        f"@dsl.component(base_image={literal(image)})",
        f"def {RUNTIME_COMPONENT}({RUNTIME_OUTPUT}: Output[Artifact]):",
        '    """nbmagic\'s runtime package (nbmagic/runtime/, zipped; generated: do not edit)."""',
        "    import base64",
        "",
        f'    with open({RUNTIME_OUTPUT}.path, "wb") as f:',
        "        f.write(",
        "            base64.b64decode(",
        *[f'                "{chunk}"' for chunk in chunks],
        "            )",
        "        )",
    ]


def generate(
    plan: PipelinePlan,
    *,
    image: str | None = None,
    packages: tuple[str, ...] | list[str] = (),
    defaults: StepSettings | None = None,
    runtime: str,
    runtime_images: frozenset[str] | set[str] = frozenset(),
) -> str:
    """The DSL module text for ``plan``.

    ``runtime``: nbmagic's runtime package (zip, base64). Components whose image is one of ``runtime_images``
    import the runtime the image has; the others take it as an artifact that one task writes once per run, so
    it is in the pipeline once, however many steps there are.
    """
    if not plan.steps:
        raise PipelineError(f"pipeline {plan.name!r} has no steps to compile")
    comps = _plan_components(plan, image, tuple(packages), defaults, frozenset(runtime_images))
    embedded = any(c.embeds_runtime for c in comps)
    metric_steps = [c for c in comps if c.metrics]
    need_kubernetes = any(_uses_kubernetes(c.settings) for c in comps)
    yaml_name = f"{kfp_pipeline_name(plan.name)}.yaml"
    header = [
        literal(
            f"KFP pipeline {plan.name!r}, generated by nbmagic"
            + (f" from {plan.notebook}" if plan.notebook else "")
            + ".\n\nEach step runs its notebook cell through nbmagic's step runtime:\n"
            + ";\n".join(
                ([] if all(c.embeds_runtime for c in comps) else [IMAGE_NOTE])
                + (
                    [
                        f"steps in other images are Python components taking it as the artifact {RUNTIME_ARG},\n"
                        "which one task writes once per run (the zipped package below)"
                    ]
                    if embedded
                    else []
                )
            )  # fmt: skip
            + "."
            + "\nCompile: python THIS_FILE [OUTPUT.yaml]"
            + f"  (default {yaml_name})\n"
        ),
        "import sys",
        "from typing import Any, NamedTuple",
        "",
        "from kfp import compiler, dsl" + (", kubernetes" if need_kubernetes else ""),
        "from kfp.dsl import Artifact, Input, Metrics, Output",
        "",
    ]
    body: list[str] = []
    if metric_steps:
        outputs = ", ".join(f"({literal(metrics_output_name(c.step.name))}, Metrics)" for c in metric_steps)
        body += [f"{OUTPUTS_CLASS} = NamedTuple({literal(OUTPUTS_CLASS)}, [{outputs}])", "", ""]
    if embedded:
        body += ["# --- nbmagic's runtime package, written once per run for the steps whose image lacks it ---", ""]
        body += _runtime_component(runtime, next(c.image for c in comps if c.embeds_runtime)) + ["", ""]
    body += ["# --- one component per notebook step ---", "", ""]
    for comp in comps:
        body += _component_source(comp, plan) + ["", ""]
    body += ["# --- the pipeline: data flow, parameters and per-step settings ---", "", ""]
    pipeline_lines = _pipeline_source(plan, comps)
    if not metric_steps and pipeline_lines[-1] == "":
        pipeline_lines.pop()
    body += pipeline_lines + ["", ""]
    body += [
        'if __name__ == "__main__":',
        f"    compiler.Compiler().compile({PIPELINE_FUNCTION}, sys.argv[1] if len(sys.argv) > 1 else {literal(yaml_name)})",
    ]
    text = "\n".join(header + body) + "\n"
    ast.parse(text)  # generated code must at least be valid Python
    return text
