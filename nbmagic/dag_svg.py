"""A directed acyclic graph drawn as SVG: one row per layer (longest path from the sources), boxes and arrows.

Used for a pipeline's steps (``%pipeline``) and a value's lineage (``%lineage``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .theme import BACKGROUND, FOREGROUND, MUTED


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    fill: str = "rgba(30, 136, 229, 0.14)"  # a tint: the theme's text stays readable on it
    stroke: str = "#1e88e5"
    radius: float = 6
    bold: bool = False


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""  # shown on the edge (shortened; the whole text is its tooltip)
    dashed: bool = False


@dataclass(frozen=True)
class Style:
    box_w: int = 150
    box_h: int = 36
    gap_x: int = 40
    gap_y: int = 70
    font_size: int = 12
    line: str = "currentColor"  # the theme's text colour, drawn half-transparent
    marker: str = "arrow"  # the arrow head's id: distinct per kind of graph shown in one page
    label_chars: int = 22  # an edge's label is shortened to this
    node_chars: int | None = None  # a box's label too, when set


def layers(keys: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each node's layer: the longest path to it from a node without inputs."""
    layer = {key: 0 for key in keys}
    pairs = list(edges)
    for _ in range(len(layer)):
        changed = False
        for a, b in pairs:
            if layer[b] < layer[a] + 1:
                layer[b] = layer[a] + 1
                changed = True
        if not changed:
            break
    return layer


def svg(nodes: Sequence[Node], edges: Sequence[Edge], style: Style = Style()) -> str:
    """The graph as one ``<svg>``; an edge over a layer bows out to the right of the boxes it passes."""
    s = style
    layer = layers([n.key for n in nodes], [(e.source, e.target) for e in edges])
    rows: dict[int, list[str]] = {}
    for node in nodes:
        rows.setdefault(layer[node.key], []).append(node.key)
    width = max((len(r) for r in rows.values()), default=1) * (s.box_w + s.gap_x) + s.gap_x
    height = int(2 * (s.gap_y / 3) + len(rows) * (s.box_h + s.gap_y) - s.gap_y)  # no empty band below
    pos: dict[str, tuple[float, float]] = {}
    for depth in sorted(rows):
        names = rows[depth]
        row_w = len(names) * (s.box_w + s.gap_x) - s.gap_x
        for i, key in enumerate(names):
            pos[key] = ((width - row_w) / 2 + i * (s.box_w + s.gap_x), s.gap_y / 3 + depth * (s.box_h + s.gap_y))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="{s.font_size}" fill="currentColor" style="color: {FOREGROUND}">',
        f'<defs><marker id="{s.marker}" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        f'<path d="M0,0 L8,4 L0,8 z" fill="{s.line}" fill-opacity="0.7"/></marker></defs>',
    ]
    extent = float(width)
    fanout: dict[str, int] = {}
    for edge in edges:
        fanout[edge.source] = fanout.get(edge.source, 0) + 1
    for edge in edges:
        (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
        x1, y1, x2, y2 = sx + s.box_w / 2, sy + s.box_h, tx + s.box_w / 2, ty
        dash = ' stroke-dasharray="4,3"' if edge.dashed else ""
        arrow = f'stroke="{s.line}" stroke-opacity="0.7"{dash} marker-end="url(#{s.marker})"'
        skip = layer[edge.target] - layer[edge.source] > 1
        cx = cy = 0.0
        if skip:
            between = [pos[k][0] + s.box_w for k, d in layer.items() if layer[edge.source] < d < layer[edge.target]]
            clear = max(between + [x1, x2]) + 24  # the curve's midpoint passes right of those boxes
            cx, cy = 2 * clear - (x1 + x2) / 2, (y1 + y2) / 2
            parts.append(f'<path d="M{x1},{y1} Q{cx},{cy} {x2},{y2 - 2}" fill="none" {arrow}/>')
        else:
            parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2 - 2}" {arrow}/>')
        if edge.label:
            full = edge.label
            label = full if len(full) <= s.label_chars else full[: s.label_chars - 1] + "…"
            # near the source when it fans out (labels of sibling edges then sit apart), else mid-way
            t = 0.3 if fanout[edge.source] > 1 and not skip else 0.5
            if skip:  # the curve's midpoint
                lx, ly = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2
            else:
                lx, ly = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
            anchor, dx = ("end", -6) if x2 < x1 - 1 and not skip else ("start", 6)
            parts.append(
                f'<text x="{lx + dx}" y="{ly + 4}" text-anchor="{anchor}" stroke-width="3" paint-order="stroke" '
                f'style="fill: {MUTED}; stroke: {BACKGROUND}"><title>{html.escape(full)}</title>{html.escape(label)}</text>'
            )
            extent = max(extent, lx + dx + 7 * len(label) if anchor == "start" else lx)
    for node in nodes:
        x, y = pos[node.key]
        weight = ' font-weight="bold"' if node.bold else ""
        parts.append(
            f'<rect x="{x}" y="{y}" width="{s.box_w}" height="{s.box_h}" rx="{min(node.radius, s.box_h / 2)}" '
            f'fill="{node.fill}" stroke="{node.stroke}"/>'
        )
        parts.append(
            f'<text x="{x + s.box_w / 2}" y="{y + s.box_h / 2 + 4}" text-anchor="middle"{weight}>'
            f"{html.escape(node.label if s.node_chars is None else node.label[: s.node_chars])}</text>"
        )
    parts.append("</svg>")
    parts[0] = parts[0].replace(f'width="{width}"', f'width="{int(extent) + 10}"', 1)
    return "".join(parts)
