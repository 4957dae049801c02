"""Show a plan: a text summary, and an SVG picture of its DAG laid out in layers."""

from __future__ import annotations

from .model import PipelinePlan


def plan_text(plan: PipelinePlan) -> str:
    lines = [f"pipeline {plan.name}" + (f"  ({plan.notebook})" if plan.notebook else "")]
    if plan.parameters:
        lines.append(
            "parameters: " + ", ".join(f"{p.name}: {p.type} = {p.default!r}" for p in plan.parameters.values())
        )
    if plan.metrics:
        lines.append("metrics: " + ", ".join(plan.metrics))
    lines.append("steps:")
    for step in plan.steps:
        reads = ", ".join(step.parameters)
        lines.append(
            f"  {step.name}"
            + (f"  [parameters: {reads}]" if reads else "")
            + (f"  -> metrics: {', '.join(step.metrics)}" if step.metrics else "")
        )
        if step.carried:
            by_cell: dict[str, list[str]] = {}
            for label, name in step.carried:
                by_cell.setdefault(label, []).append(name)
            lines.append(
                "    carries: " + "; ".join(f"{label}: {', '.join(names)}" for label, names in by_cell.items())
            )
        if step.in_place:
            lines.append("    changes in place: " + ", ".join(var for var, _ in step.in_place))
    edges = plan.edges
    if edges:
        lines.append("edges:")
        for edge in edges:
            how = "--after" if edge.explicit and not edge.variables else "inferred"
            if edge.explicit and edge.variables:
                how = "--after, inferred"
            flow = ", ".join(edge.variables) if edge.variables else "(order only)"
            lines.append(f"  {edge.source} -> {edge.target}: {flow}  [{how}]")
    return "\n".join(lines)


def plan_svg(plan: PipelinePlan) -> str:
    """The DAG as SVG: one row per layer, edges labelled with the variables that flow on them."""
    from ..dag_svg import Edge, Node, svg

    nodes = [Node(s.name, s.name, fill="#e8f5e9" if s.metrics else "#e3f2fd") for s in plan.steps]
    edges = [
        Edge(e.source, e.target, ", ".join(e.variables), dashed=e.explicit and not e.variables) for e in plan.edges
    ]
    return svg(nodes, edges)
