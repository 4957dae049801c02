"""Show a plan: a text summary, and an SVG picture of its DAG laid out in layers."""

from __future__ import annotations

import html

from . import theme
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


def _layers(plan: PipelinePlan) -> dict[str, int]:
    layer: dict[str, int] = {}
    for step in plan.steps:  # plan.steps is topologically ordered
        layer[step.name] = 1 + max((layer[u] for u in step.upstream), default=-1)
    return layer


def plan_svg(plan: PipelinePlan) -> str:
    """The DAG as SVG: one row per layer, edges labelled with the variables that flow on them."""
    layer = _layers(plan)
    rows: dict[int, list[str]] = {}
    for step in plan.steps:
        rows.setdefault(layer[step.name], []).append(step.name)
    box_w, box_h, gap_x, gap_y = 150, 36, 40, 70
    width = max(len(r) for r in rows.values()) * (box_w + gap_x) + gap_x
    height = int(gap_y / 3 + len(rows) * (box_h + gap_y) - gap_y + gap_y / 3)
    pos: dict[str, tuple[float, float]] = {}
    for depth, names in rows.items():
        row_w = len(names) * (box_w + gap_x) - gap_x
        for i, name in enumerate(names):
            x = (width - row_w) / 2 + i * (box_w + gap_x)
            pos[name] = (x, gap_y / 3 + depth * (box_h + gap_y))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12" style="color: {theme.FOREGROUND}" fill="currentColor">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="currentColor" fill-opacity="0.7"/></marker></defs>',
    ]
    extent = float(width)
    fanout: dict[str, int] = {}
    for edge in plan.edges:
        fanout[edge.source] = fanout.get(edge.source, 0) + 1
    for edge in plan.edges:
        (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
        x1, y1, x2, y2 = sx + box_w / 2, sy + box_h, tx + box_w / 2, ty
        dash = ' stroke-dasharray="4,3"' if edge.explicit and not edge.variables else ""
        skip = layer[edge.target] - layer[edge.source] > 1
        if skip:
            # an edge over a layer bows out to the right so it does not run through the boxes between
            between = [pos[n][0] + box_w for n, d in layer.items() if layer[edge.source] < d < layer[edge.target]]
            clear = max(between + [x1, x2]) + 24  # the curve's midpoint passes right of those boxes
            cx, cy = 2 * clear - (x1 + x2) / 2, (y1 + y2) / 2
            parts.append(
                f'<path d="M{x1},{y1} Q{cx},{cy} {x2},{y2 - 2}" fill="none" stroke="currentColor" stroke-opacity="0.7"{dash} marker-end="url(#arrow)"/>'
            )
        else:
            parts.append(
                f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2 - 2}" stroke="currentColor" stroke-opacity="0.7"{dash} marker-end="url(#arrow)"/>'
            )
        if edge.variables:
            full = ", ".join(edge.variables)
            label = full if len(full) <= 22 else full[:21] + "…"
            # near the source when it fans out (labels of sibling edges then sit apart), else mid-way
            t = 0.3 if fanout[edge.source] > 1 and not skip else 0.5
            if skip:  # the curve's midpoint
                lx, ly = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2
            else:
                lx, ly = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
            anchor, dx = ("end", -6) if x2 < x1 - 1 and not skip else ("start", 6)
            parts.append(
                f'<text x="{lx + dx}" y="{ly + 4}" text-anchor="{anchor}" fill="currentColor" stroke-width="3" '
                f'paint-order="stroke" style="stroke: {theme.BACKGROUND}; fill: {theme.MUTED}"><title>{html.escape(full)}</title>{html.escape(label)}</text>'
            )
            extent = max(extent, lx + dx + 7 * len(label) if anchor == "start" else lx)
    for step in plan.steps:
        x, y = pos[step.name]
        fill = theme.METRIC_BOX if step.metrics else theme.STEP_BOX
        parts.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="#1e88e5"/>')
        parts.append(
            f'<text x="{x + box_w / 2}" y="{y + box_h / 2 + 4}" text-anchor="middle">{html.escape(step.name)}</text>'
        )
    parts.append("</svg>")
    parts[0] = parts[0].replace(f'width="{width}"', f'width="{int(extent) + 10}"', 1)
    return "".join(parts)
