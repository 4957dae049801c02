"""Compile a PipelinePlan to KFP v2 IR YAML with the kfp SDK, or export it as a readable KFP DSL module.

Both go through one generated module (see ``generate``): ``compile_pipeline`` imports it from a temporary file (so
``dsl.component`` can read the component sources) and runs ``kfp.compiler``; ``export_dsl`` writes it for review.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import uuid
from pathlib import Path

from ..errors import NbMagicError, PipelineError
from ..pipeline.model import PipelinePlan
from ..pipeline.settings import StepSettings
from .bundle import runtime_base64
from .generate import PIPELINE_FUNCTION, generate


def runtime_images(runtime_image: str | None = None) -> frozenset[str]:
    """Images that have nbmagic's runtime installed: the cluster image (``$NBMAGIC_IMAGE``) and ``runtime_image``."""
    from ..images import nbmagic_image

    return frozenset(filter(None, (nbmagic_image(), runtime_image)))


def dsl_source(
    plan: PipelinePlan,
    *,
    image: str | None = None,
    packages: tuple[str, ...] | list[str] = (),
    defaults: StepSettings | None = None,
    runtime_image: str | None = None,
) -> str:
    """The KFP DSL Python module for ``plan`` (what ``export_dsl`` writes and ``compile_pipeline`` compiles).

    ``runtime_image``: an image that has nbmagic installed (the cluster image built from the Dockerfile), whose
    steps import nbmagic's runtime from it; steps in other images get the runtime zipped, once per pipeline.
    """
    return generate(
        plan,
        image=image,
        packages=tuple(packages),
        defaults=defaults,
        runtime=runtime_base64(),
        runtime_images=runtime_images(runtime_image),
    )


def compile_source(source: str, name: str = "pipeline") -> str:
    """Import a generated DSL module from a temporary file and compile its pipeline; returns the IR YAML text."""
    from kfp import compiler

    with tempfile.TemporaryDirectory(prefix="nbmagic-compile-") as tmp:
        module_name = f"nbmagic_generated_{uuid.uuid4().hex}"
        module_path = Path(tmp) / f"{module_name}.py"
        module_path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(module_name, module_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            output = Path(tmp) / "pipeline.yaml"
            compiler.Compiler().compile(getattr(module, PIPELINE_FUNCTION), str(output))
            return output.read_text(encoding="utf-8")
        except NbMagicError:
            raise
        except Exception as exc:  # the kfp SDK rejected something: report it as one line
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"kfp could not compile pipeline {name!r}: {message}") from exc
        finally:
            sys.modules.pop(module_name, None)


def compile_pipeline(
    plan: PipelinePlan,
    *,
    image: str | None = None,
    packages: tuple[str, ...] | list[str] = (),
    output: Path | str | None = None,
    defaults: StepSettings | None = None,
    runtime_image: str | None = None,
) -> str:
    """Compile ``plan`` to KFP v2 IR YAML; writes it to ``output`` when given. Returns the YAML text.

    ``image`` / ``packages``: pipeline-wide base image and extra requirements (a step's own settings win);
    ``defaults``: pipeline-wide step settings merged under each step's (``settings.merge``);
    ``runtime_image``: see :func:`dsl_source`.
    """
    import warnings

    source = dsl_source(plan, image=image, packages=packages, defaults=defaults, runtime_image=runtime_image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp's note about its future default base image
        text = _header_safe(compile_source(source, plan.name), plan)
    if output is not None:
        path = Path(output)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text


def _header_safe(text: str, plan: PipelinePlan) -> str:
    """kfp writes each str parameter's default raw into its ``#`` comment header: a default with a line break
    would continue on an uncommented line and the YAML would not parse. Comment those continuation lines."""
    import re

    for parameter in plan.parameters.values():
        if parameter.type != "str" or not re.search(r"[\r\n]", parameter.default):
            continue
        shown = re.sub(r"\r\n|\r", "\n", f"[Default: '{parameter.default}']")  # read back in text mode
        commented = shown.replace("\n", "\n#      ")
        text = text.replace(shown, commented, 1)
    return text


def export_dsl(
    plan: PipelinePlan,
    path: Path | str,
    *,
    image: str | None = None,
    packages: tuple[str, ...] | list[str] = (),
    defaults: StepSettings | None = None,
    runtime_image: str | None = None,
) -> Path:
    """Write a readable KFP DSL Python file equivalent to ``compile_pipeline``'s YAML; returns its path."""
    path = Path(path)
    text = dsl_source(plan, image=image, packages=packages, defaults=defaults, runtime_image=runtime_image)
    path.write_text(text, encoding="utf-8")
    return path


def write_output(
    plan: PipelinePlan,
    output: Path | str,
    *,
    defaults: StepSettings | None = None,
    image: str | None = None,
    runtime_image: str | None = None,
) -> Path:
    """Write the compiled pipeline to ``output``: KFP IR YAML, or readable KFP DSL for a ``.py`` path."""
    path = Path(output).expanduser()
    if not path.parent.is_dir():
        raise NbMagicError(f"--output {output}: folder {path.parent} does not exist")
    if path.suffix.lower() not in (".yaml", ".yml", ".py"):
        raise NbMagicError(f"--output {output}: name a .yaml file (KFP IR) or a .py file (readable KFP DSL)")
    if path.suffix == ".py":
        return export_dsl(plan, path, image=image, defaults=defaults, runtime_image=runtime_image)
    compile_pipeline(plan, output=path, image=image, defaults=defaults, runtime_image=runtime_image)
    return path
