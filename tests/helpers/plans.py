"""Building PipelinePlan steps for tests, as the %%step magic would record them."""

from __future__ import annotations

from nbmagic.pipeline.model import Cell, StepPlan


def step(
    name: str,
    code: str,
    *,
    inputs: dict[str, str] | None = None,
    params: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
    prelude: str = "",
    modules: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    index: int = 1,
    notebook: str = "demo.ipynb",
) -> StepPlan:
    """A StepPlan for cell ``index`` of ``notebook``: upstream = producers of ``inputs``, then ``after``."""
    inputs = inputs or {}
    return StepPlan(
        name=name,
        cell=Cell(source=code, code=code, index=index, label=f"{notebook} cell {index}"),
        inputs=inputs,
        parameters=tuple(params),
        writes=tuple(outputs),
        outputs=tuple(outputs),
        metrics=tuple(metrics),
        prelude=prelude,
        modules=tuple(modules),
        upstream=tuple(dict.fromkeys([*inputs.values(), *after])),
        explicit_after=tuple(after),
    )
