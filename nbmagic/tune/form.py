"""The ``%katib`` form: ipywidgets pre-filled from the recorded parameters and metrics.

Run builds the same :class:`ExperimentSpec` the magic arguments build and calls ``on_run(spec)``;
mistakes appear inline next to their row, never as a traceback. ipywidgets is imported lazily.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import NbMagicError
from .space import (
    ALGORITHMS,
    GOALS,
    SPACE_TYPES,
    ExperimentSpec,
    ParameterSpace,
    TuneError,
    _fmt,
    _number,
    _split,
    guess_goal,
    suggest_space,
)

ERROR_STYLE = "color:#e53935"  # mid-tone red: readable in light and dark themes
# the row's column widths, shared by the header so its labels sit over their inputs
COLUMNS = (("tune / fixed", 140), ("type", 110), ("min", 90), ("max", 90), ("log", 50), ("step", 70), ("values", 220))
NO_WIDGETS = (
    "The %katib form is an ipywidgets widget, and this front end cannot show widgets. In classic Notebook 6 or "
    "nbclassic install them into the Jupyter server's environment: pip install widgetsnbextension "
    "(JupyterLab and Notebook 7: pip install jupyterlab_widgets), then reload the page. Or tune with flags:\n"
)


class _Row:
    """One recorded parameter: tune or keep fixed, type, range or values."""

    def __init__(self, parameter: Any, tuned: bool) -> None:
        import ipywidgets as w

        space = suggest_space(parameter)
        self.parameter = parameter
        width = {name: w.Layout(width=f"{px}px") for name, px in COLUMNS}
        self.tune = w.Checkbox(value=tuned, description=parameter.name, indent=False, layout=width["tune / fixed"])
        self.type = w.Dropdown(options=list(SPACE_TYPES), value=space.type, layout=width["type"])
        self.min = w.Text(
            value=_fmt(space.min) if space.min is not None else "", placeholder="min", layout=width["min"]
        )
        self.max = w.Text(
            value=_fmt(space.max) if space.max is not None else "", placeholder="max", layout=width["max"]
        )
        self.log = w.Checkbox(value=space.log, description="log", indent=False, layout=width["log"])
        self.step = w.Text(value="", placeholder="step", layout=width["step"])
        self.values = w.Text(value=", ".join(space.values), placeholder="a, b, c", layout=width["values"])
        self.fixed = w.Text(value=str(parameter.default), placeholder="value", layout=w.Layout(width="220px"))
        self.error = w.HTML(value="")
        self.widget = w.HBox(
            [self.tune, self.type, self.min, self.max, self.log, self.step, self.values, self.fixed, self.error]
        )
        for control in (self.tune, self.type):
            control.observe(lambda change: self.sync(), names="value")
        self.sync()

    def sync(self) -> None:
        """Show only the controls that apply to the chosen mode and type."""
        ranged = self.type.value in ("double", "int")
        for control, shown in (
            (self.type, self.tune.value),
            (self.min, self.tune.value and ranged),
            (self.max, self.tune.value and ranged),
            (self.log, self.tune.value and ranged),
            (self.step, self.tune.value and ranged),
            (self.values, self.tune.value and not ranged),
            (self.fixed, not self.tune.value),
        ):
            control.layout.display = None if shown else "none"

    def space(self, algorithm: str) -> ParameterSpace:
        name, kind = self.parameter.name, self.type.value
        where = f"parameter {name!r}"
        if kind in ("categorical", "discrete"):
            return ParameterSpace(name, kind, values=tuple(v for v in _split(self.values.value) if v)).validate(
                algorithm
            )
        low = _number(self.min.value.strip(), f"{where} min") if self.min.value.strip() else None
        high = _number(self.max.value.strip(), f"{where} max") if self.max.value.strip() else None
        step = _number(self.step.value.strip(), f"{where} step") if self.step.value.strip() else None
        return ParameterSpace(name, kind, low, high, step, self.log.value).validate(algorithm)

    def show_error(self, message: str) -> None:
        import html

        self.error.value = f'<span style="{ERROR_STYLE}">{html.escape(message)}</span>' if message else ""


def _form_box(children: list[Any]) -> Any:
    import ipywidgets as w

    class FormBox(w.VBox):
        """The form's box; its text form (for front ends without widgets) says how to get them, or what to type."""

        fallback = ""

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            bundle = super()._repr_mimebundle_(**kwargs)
            if self.fallback and isinstance(bundle, dict):
                bundle["text/plain"] = self.fallback
            return bundle

    return FormBox(children)


class TuneForm:
    """The search-space form. ``.widget`` to display; ``.build_spec()``; Run calls ``on_run(spec)``."""

    def __init__(
        self,
        parameters: Mapping[str, Any],
        metrics: Sequence[str],
        on_run: Callable[[ExperimentSpec], Any],
        *,
        defaults: ExperimentSpec | None = None,
    ) -> None:
        import ipywidgets as w

        self.parameters, self.metrics, self.on_run = dict(parameters), list(metrics), on_run
        self.experiment: Any = None
        self._stopping_settings = (defaults.min_trials, defaults.start_step) if defaults else (3, 4)
        tuned = (
            {p.name for p in defaults.parameters}
            if defaults
            else {n for n, p in self.parameters.items() if p.type in ("float", "int")}
        )
        self.rows = [_Row(p, p.name in tuned) for p in self.parameters.values()]
        objective = (defaults.objective if defaults else "") or (self.metrics[0] if self.metrics else None)
        self.objective = w.Dropdown(
            options=self.metrics, value=objective if objective in self.metrics else None, description="objective"
        )
        self.goal = w.Dropdown(
            options=list(GOALS), value=defaults.goal if defaults else guess_goal(objective or ""), description="goal"
        )
        self.additional = w.SelectMultiple(
            options=self.metrics,
            value=tuple(defaults.additional_metrics) if defaults else (),
            description="also track",
            rows=min(4, max(1, len(self.metrics))),
        )
        self.algorithm = w.Dropdown(
            options=list(ALGORITHMS), value=defaults.algorithm if defaults else "tpe", description="algorithm"
        )
        self.max_trials = w.BoundedIntText(
            value=defaults.max_trials if defaults else 12, min=1, max=100000, description="max trials"
        )
        self.parallel = w.BoundedIntText(
            value=defaults.parallel_trials if defaults else 1, min=1, max=1000, description="parallel"
        )
        self.max_failed = w.BoundedIntText(
            value=defaults.max_failed_trials if defaults else 3, min=1, max=100000, description="max failed"
        )
        self.early_stopping = w.Dropdown(
            options=[("none", None), ("medianstop", "medianstop")],
            value=defaults.early_stopping if defaults else None,
            description="early stop",
        )
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="", icon="stop", disabled=True)
        self.error = w.HTML(value="")
        self.command = w.HTML(value="")
        self.view: Any = None  # the display handle of the output under the form, where the live view goes
        self.output = w.Output()
        self.run_button.on_click(lambda button: self.run())
        self.stop_button.on_click(lambda button: self.stop())
        header = w.HBox(
            [w.HTML(f"<b>{name}</b>", layout=w.Layout(width=f"{px}px")) for name, px in COLUMNS],
        )
        self.widget = _form_box(
            [
                header,
                *(row.widget for row in self.rows),
                w.HBox([self.objective, self.goal]),
                self.additional,
                w.HBox([self.algorithm, self.max_trials]),
                w.HBox([self.parallel, self.max_failed]),
                self.early_stopping,
                w.HBox([self.run_button, self.stop_button]),
                self.error,
                self.command,
                self.output,
            ]
        )
        self.widget.add_class("nbmagic-katib-form")
        self.widget.fallback = NO_WIDGETS + self.command_line()

    def _ipython_display_(self) -> None:
        self.show()

    def show(self) -> None:
        """Display the form, and under it an ordinary output the live view fills (kept when the notebook is saved)."""
        from IPython.display import display

        display(self.widget)
        self.view = display({"text/plain": ""}, raw=True, display_id=True)

    def command_line(self) -> str:
        """The form's current settings as a ``%katib`` line (what a terminal shows instead of the form)."""
        import shlex

        shown = [self.error.value, self.command.value, *(row.error.value for row in self.rows)]
        spec = self.build_spec()
        self.error.value, self.command.value = shown[0], shown[1]  # asking changes nothing on screen
        for row, error in zip(self.rows, shown[2:]):
            row.error.value = error
        if spec is None:
            return "%katib --param NAME=double(MIN,MAX) ..."
        return "%katib " + " ".join(shlex.quote(a) for a in spec.to_args())

    def row(self, name: str) -> _Row:
        return next(r for r in self.rows if r.parameter.name == name)

    def build_spec(self) -> ExperimentSpec | None:
        """The spec from the form's fields, or None with every mistake shown in its row."""
        algorithm = self.algorithm.value
        spaces, fixed, ok = [], {}, True
        for row in self.rows:
            try:
                if row.tune.value:
                    spaces.append(row.space(algorithm))
                else:
                    fixed[row.parameter.name] = row.parameter.coerce(row.fixed.value)
                row.show_error("")
            except NbMagicError as exc:
                row.show_error(str(exc))
                ok = False
        self.error.value = ""
        if not ok:
            self._say("fix the marked rows")
            return None
        spec = ExperimentSpec(
            parameters=tuple(spaces),
            objective=self.objective.value or "",
            goal=self.goal.value,
            fixed=fixed,
            additional_metrics=tuple(m for m in self.additional.value if m != self.objective.value),
            algorithm=algorithm,
            max_trials=self.max_trials.value,
            parallel_trials=self.parallel.value,
            max_failed_trials=self.max_failed.value,
            early_stopping=self.early_stopping.value,
            min_trials=self._stopping_settings[0],
            start_step=self._stopping_settings[1],
        )
        try:
            spec = spec.check_against(self.parameters, self.metrics)
        except NbMagicError as exc:
            self._say(str(exc))
            return None
        import html
        import shlex

        self.command.value = f"<code>%katib {html.escape(' '.join(shlex.quote(a) for a in spec.to_args()))}</code>"
        return spec

    def _say(self, message: str) -> None:
        import html

        self.error.value = f'<span style="{ERROR_STYLE}">{html.escape(message)}</span>'

    def run(self) -> Any:
        """Run button: build the spec and start the experiment through ``on_run``."""
        spec = self.build_spec()
        if spec is None:
            return None
        with self.output:
            try:
                self.experiment = self.on_run(spec)
            except NbMagicError as exc:
                self._say(str(exc))
                return None
            except Exception as exc:  # shown in the form; the traceback goes to the output area
                self._say(f"{type(exc).__name__}: {exc}".splitlines()[0])
                traceback.print_exc()
                return None
        if self.experiment is not None:
            self._stoppable(True)
            self.experiment.on_update(self._ended)
        return self.experiment

    def _ended(self, experiment: Any) -> None:
        if experiment.done:
            self._stoppable(False)

    def stop(self) -> None:
        if self.experiment is not None:
            self.experiment.stop()
            self._stoppable(False)

    def _stoppable(self, on: bool) -> None:
        """A disabled Stop button is plain, not a bright warning colour."""
        self.stop_button.disabled = not on
        self.stop_button.button_style = "warning" if on else ""

    # the form stands in for its experiment: `exp = %katib` then `exp.best` after clicking Run
    def _current(self) -> Any:
        if self.experiment is None:
            raise TuneError("no experiment yet: fill in the form and click Run")
        return self.experiment

    @property
    def best(self) -> Any:
        return self._current().best

    @property
    def trials(self) -> Any:
        return self._current().trials

    def wait(self, timeout: float | None = None) -> Any:
        return self._current().wait(timeout)
