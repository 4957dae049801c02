"""The live view of an experiment: progress, best so far, trials table, and two inline SVG plots
(parallel coordinates of parameters against the objective, as in Katib's UI, and objective per trial).

Rendered as HTML from data (no matplotlib) with a text/plain twin, shown with an IPython display handle and
updated from the experiment's background thread, so it works in JupyterLab, Notebook 7, VS Code, classic
Notebook, nbclient and text-only front ends alike, and stays in the saved notebook.
"""

from __future__ import annotations

import html
import math
import threading
import time
from typing import Any

from .. import theme
from .experiment import FAILED, PRUNED, RUNNING, SUCCEEDED, Experiment, Trial

WIDTH, HEIGHT, PAD = 560, 220, 36


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _svg_open(kind: str) -> str:
    """An SVG whose text and axes take the theme's text colour (``currentColor``)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" class="{kind}" '
        f'fill="currentColor" style="color: {theme.FOREGROUND}">'
    )


AXIS = 'stroke="currentColor" stroke-opacity="0.6"'


def _color(fraction: float) -> str:
    """0 -> best (blue) ... 1 -> worst (orange)."""
    fraction = min(1.0, max(0.0, fraction))
    red, green, blue = int(31 + fraction * 224), int(119 + fraction * 8), int(180 - fraction * 166)
    return f"rgb({red},{green},{blue})"


def _scale(p: Any, value: Any) -> float | None:
    """Position of a value on a parameter's axis, 0..1."""
    try:
        if p.type in ("categorical", "discrete"):
            values = [p.cast(v) for v in p.values]
            index = values.index(p.cast(value))
            return 0.5 if len(values) == 1 else index / (len(values) - 1)
        low, high, number = float(p.min), float(p.max), float(value)
        if p.log and low > 0 and number > 0:
            low, high, number = math.log(low), math.log(high), math.log(number)
        return 0.5 if high == low else (number - low) / (high - low)
    except (ValueError, TypeError):
        return None


def _ranks(experiment: Experiment, trials: list[Trial]) -> dict[int, float]:
    done = [t for t in trials if t.status == SUCCEEDED and t.objective is not None]
    if not done:
        return {}
    values = [t.objective for t in done]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    flip = experiment.spec.goal == "maximize"
    return {t.number: ((high - t.objective) if flip else (t.objective - low)) / span for t in done}


def parallel_coordinates_svg(experiment: Experiment, trials: list[Trial]) -> str:
    """One vertical axis per tuned parameter plus the objective; one line per finished trial."""
    params = list(experiment.spec.parameters)
    axes = len(params) + 1
    step = (WIDTH - 2 * PAD) / max(1, axes - 1)
    ranks = _ranks(experiment, trials)
    done = [t for t in trials if t.number in ranks]
    objectives = [t.objective for t in done]
    low, high = (min(objectives), max(objectives)) if objectives else (0.0, 1.0)
    parts = [_svg_open("nbmagic-parcoords")]
    y = lambda f: HEIGHT - PAD - f * (HEIGHT - 2 * PAD)  # noqa: E731
    for t in sorted(done, key=lambda t: -ranks[t.number]):  # best drawn last, on top
        points = []
        for i, p in enumerate(params):
            f = _scale(p, t.parameters.get(p.name))
            if f is not None:
                points.append(f"{PAD + i * step:.1f},{y(f):.1f}")
        f_obj = 0.5 if high == low else (t.objective - low) / (high - low)
        points.append(f"{PAD + (axes - 1) * step:.1f},{y(f_obj):.1f}")
        parts.append(
            f'<polyline fill="none" stroke="{_color(ranks[t.number])}" stroke-width="1.5" '
            f'opacity="0.85" points="{" ".join(points)}"><title>trial {t.number}</title></polyline>'
        )
    labels = [(p.name, p.to_text().split("=", 1)[1]) for p in params] + [
        (experiment.spec.objective, f"{_fmt(low)}..{_fmt(high)}" if objectives else "")
    ]
    for i, (name, detail) in enumerate(labels):
        x = PAD + i * step
        # outer axes' labels grow inwards so they are not cut at the SVG's edges
        anchor, tx = "middle", x
        if axes > 1 and i in (0, axes - 1):
            anchor, tx = ("start", x - 4) if i == 0 else ("end", x + 4)
        parts.append(f'<line x1="{x:.1f}" y1="{PAD}" x2="{x:.1f}" y2="{HEIGHT - PAD}" {AXIS}/>')
        parts.append(
            f'<text x="{tx:.1f}" y="{PAD - 14}" font-size="11" text-anchor="{anchor}">{html.escape(name)}</text>'
        )
        parts.append(
            f'<text x="{tx:.1f}" y="{HEIGHT - PAD + 14}" font-size="9" text-anchor="{anchor}" fill-opacity="0.75">'
            f"{html.escape(detail[:28])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def objective_svg(experiment: Experiment, trials: list[Trial]) -> str:
    """Objective of each finished trial (dots) and the best so far (line)."""
    done = sorted((t for t in trials if t.status == SUCCEEDED and t.objective is not None), key=lambda t: t.number)
    parts = [_svg_open("nbmagic-objective")]
    parts.append(f'<text x="{PAD}" y="16" font-size="11">{html.escape(experiment.spec.objective)} per trial</text>')
    if done:
        values = [t.objective for t in done]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        last = max(t.number for t in trials) or 1
        x = lambda n: PAD + n / last * (WIDTH - 2 * PAD)  # noqa: E731
        y = lambda v: HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD)  # noqa: E731
        best, line = None, []
        for t in done:
            better = best is None or (t.objective < best if experiment.spec.goal == "minimize" else t.objective > best)
            best = t.objective if better else best
            line.append(f"{x(t.number):.1f},{y(best):.1f}")
            parts.append(
                f'<circle cx="{x(t.number):.1f}" cy="{y(t.objective):.1f}" r="3" fill="#1f77b4">'
                f"<title>trial {t.number}: {_fmt(t.objective)}</title></circle>"
            )
        parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{" ".join(line)}"/>')
        parts.append(f'<text x="{PAD - 4}" y="{y(high) + 4:.1f}" font-size="9" text-anchor="end">{_fmt(high)}</text>')
        parts.append(f'<text x="{PAD - 4}" y="{y(low) + 4:.1f}" font-size="9" text-anchor="end">{_fmt(low)}</text>')
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" {AXIS}/>')
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(experiment: Experiment, trials: list[Trial]) -> str:
    """Each trial's reported values per step (``nbmagic.report``); pruned trials dashed, where they stopped."""
    shown = [t for t in trials if t.curve]
    if not shown:
        return ""
    values = [v for t in shown for _, v in t.curve]
    steps = [s for t in shown for s, _ in t.curve]
    low, high, last = min(values), max(values), max(steps) or 1
    span = (high - low) or 1.0
    x = lambda s: PAD + s / last * (WIDTH - 2 * PAD)  # noqa: E731
    y = lambda v: HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD)  # noqa: E731
    colors = {PRUNED: "#fb8c00", RUNNING: "#43a047", SUCCEEDED: "#1f77b4"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" class="nbmagic-curves">']
    parts.append(
        f'<text x="{PAD}" y="16" font-size="11">{html.escape(experiment.spec.objective)} per step '
        '(<tspan fill="#fb8c00">pruned</tspan>, <tspan fill="#43a047">running</tspan>)</text>'
    )
    for t in shown:
        dash = ' stroke-dasharray="4 3"' if t.status == PRUNED else ""
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in t.curve)
        parts.append(
            f'<polyline fill="none" stroke="{colors.get(t.status, "#999")}" stroke-width="1.3"{dash} '
            f'points="{points}"><title>trial {t.number} ({t.status})</title></polyline>'
        )
    parts.append(f'<text x="{PAD - 4}" y="{y(high) + 4:.1f}" font-size="9" text-anchor="end">{_fmt(high)}</text>')
    parts.append(f'<text x="{PAD - 4}" y="{y(low) + 4:.1f}" font-size="9" text-anchor="end">{_fmt(low)}</text>')
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#555"/>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(experiment: Experiment) -> str:
    """The whole view as one HTML fragment."""
    trials = experiment.trials
    spec = experiment.spec
    finished = sum(t.status != RUNNING for t in trials)
    running = sum(t.status == RUNNING for t in trials)
    failed = sum(t.status == FAILED for t in trials)
    pruned = sum(t.status == PRUNED for t in trials)
    percent = int(100 * finished / max(1, spec.max_trials))
    best = experiment.best
    rows = []
    names = [p.name for p in spec.parameters]
    for t in trials:
        mark = f' style="background:{theme.BEST_ROW}"' if best and t.number == best.trial else ""
        cells = [
            str(t.number),
            *(_fmt(t.parameters.get(n, "")) for n in names),
            t.status,
            "" if t.objective is None else _fmt(t.objective),
            "" if t.duration is None else f"{t.duration:.2f}s",
            str(t.cached_steps),
            html.escape((t.error or "")[:160]),
        ]
        rows.append(f"<tr{mark}>" + "".join(f'<td style="{theme.CELL}">{c}</td>' for c in cells) + "</tr>")
    head = "".join(
        f'<th style="{theme.CELL}">{html.escape(h)}</th>'
        for h in ["trial", *names, "status", spec.objective, "duration", "cached steps", "error"]
    )
    best_text = "no finished trial yet"
    if best:
        best_text = f"best: trial {best.trial}, {html.escape(spec.objective)} = {_fmt(best.objective)}, " + ", ".join(
            f"{html.escape(k)}={_fmt(v)}" for k, v in best.parameters.items()
        )
    note = f'<div style="color:{theme.WARNING}">{html.escape(experiment.note)}</div>' if experiment.note else ""
    message = (
        (
            f'<div style="color:{theme.ERROR if experiment.status == FAILED else theme.MUTED}">'
            f"{html.escape(experiment.message)}</div>"
        )
        if experiment.message
        else ""
    )
    return (
        f'<div class="nbmagic-tune" data-status="{experiment.status}">'
        f"<b>{html.escape(experiment.backend)} experiment {html.escape(experiment.name)}</b> "
        f"({html.escape(spec.algorithm)}, {spec.goal} {html.escape(spec.objective)}): "
        f'<span class="nbmagic-status">{experiment.status}</span>, {finished}/{spec.max_trials} finished, '
        f"{running} running, {failed} failed{f', {pruned} pruned' if pruned else ''}"
        f'<div style="background:{theme.TRACK};width:{WIDTH}px;height:6px"><div style="background:#1f77b4;'
        f'width:{percent}%;height:6px"></div></div>'
        f'<div class="nbmagic-best">{best_text}</div>{note}{message}'
        f'<div style="display:flex;flex-wrap:wrap">{parallel_coordinates_svg(experiment, trials)}'
        f"{objective_svg(experiment, trials)}{curves_svg(experiment, trials)}</div>"
        f'<table class="nbmagic-trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def render_text(experiment: Experiment) -> str:
    """The view as text: the terminal's lines, for text-only front ends, exports and saved notebooks."""
    spec = experiment.spec
    trials = experiment.trials
    finished = sum(t.status != RUNNING for t in trials)
    lines = [
        f"{experiment.backend} experiment {experiment.name} ({spec.algorithm}, {spec.goal} {spec.objective}): "
        f"{experiment.status}, {finished}/{spec.max_trials} finished, "
        f"{sum(t.status == RUNNING for t in trials)} running, {sum(t.status == FAILED for t in trials)} failed"
    ]
    best = experiment.best
    if best:
        settings = ", ".join(f"{k}={_plain(v)}" for k, v in best.parameters.items())
        lines.append(f"best: trial {best.trial}, {spec.objective}={_plain(best.objective)}, {settings}")
    lines += [text for text in (experiment.note, experiment.message) if text]
    for t in trials:
        settings = " ".join(f"{k}={_plain(v)}" for k, v in t.parameters.items())
        outcome = "" if t.objective is None else f" {spec.objective}={_plain(t.objective)}"
        took = "" if t.duration is None else f" ({t.duration:.2f} s)"
        error = f": {t.error.strip().splitlines()[-1]}" if t.error and t.error.strip() else ""
        lines.append(f"  trial {t.number} {t.status}{outcome}{took} {settings}{error}".rstrip())
    return "\n".join(lines)


def _plain(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(experiment: Experiment) -> dict[str, str]:
    """The view as a display bundle: HTML, and text/plain for front ends that show only text."""
    return {"text/html": render_html(experiment), "text/plain": render_text(experiment)}


class LiveView:
    """Displays ``render(experiment)`` and refreshes it (at most every ``interval`` s) as trials change.

    The view is an ordinary display output updated through its ``display_id``, so a saved notebook keeps the
    final table and plots (a widget would be "model not found" after reopening).
    """

    def __init__(self, experiment: Experiment, interval: float = 0.3, target: Any = None) -> None:
        self.experiment = experiment
        # a display handle to update (the output under the %katib form), or an ipywidgets.HTML
        self.target = target
        self.interval = interval
        self._handle: Any = None
        self._lock = threading.Lock()
        self._last = 0.0
        self._pending = False

    def show(self) -> LiveView:
        if self.target is not None and hasattr(self.target, "display_id"):
            self._handle = self.target
            self._handle.update(render(self.experiment), raw=True)
        elif self.target is not None:
            self.target.value = render_html(self.experiment)
        else:
            from IPython.display import display

            self._handle = display(render(self.experiment), raw=True, display_id=True)
        self.experiment.on_update(self._changed)
        if self.experiment.done:
            self.refresh()
        return self

    def _changed(self, experiment: Experiment) -> None:
        with self._lock:
            now = time.monotonic()
            if not experiment.done and now - self._last < self.interval:
                if not self._pending:  # render once more after the quiet interval
                    self._pending = True
                    threading.Timer(self.interval, self._flush).start()
                return
            self._last = now
        self.refresh()

    def _flush(self) -> None:
        with self._lock:
            self._pending = False
            self._last = time.monotonic()
        self.refresh()

    def refresh(self) -> None:
        if self._handle is not None:
            self._handle.update(render(self.experiment), raw=True)
        elif self.target is not None:
            self.target.value = render_html(self.experiment)


class TerminalView:
    """The live view for terminal IPython: one line per finished trial, and the summary at the end."""

    def __init__(self, experiment: Any, write: Any = None) -> None:
        self.experiment = experiment
        self.write = write or (lambda text: print(text, flush=True))
        self._reported: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()

    def attach(self) -> TerminalView:
        self.experiment.on_update(self.update)
        return self

    def update(self, experiment: Any) -> None:
        with self._lock:
            spec = experiment.spec
            for trial in list(experiment.trials):
                if trial.status == "running" or trial.number in self._reported:
                    continue
                self._reported.add(trial.number)
                best = experiment.best
                if trial.status == "succeeded" and trial.objective is not None:
                    outcome = f"{spec.objective}={trial.objective:.6g}"
                else:
                    outcome = f"{trial.status}: {(trial.error or '').strip().splitlines()[-1] if trial.error else ''}"
                best_text = f" (best {best.objective:.6g}, trial {best.trial})" if best else ""
                settings = " ".join(f"{k}={_plain(v)}" for k, v in trial.parameters.items())
                self.write(f"[{experiment.name}] trial {trial.number} {outcome} {settings}{best_text}")
            if experiment.done and not self._closed:
                self._closed = True
                self.write(f"[{experiment.name}] {experiment.summary()}")
