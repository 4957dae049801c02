"""The search space and experiment spec as plain data, parsed from ``--param`` text or built by the form.

Parameter syntax (one ``--param`` per tuned parameter)::

    lr=double(1e-4, 1e-1, log)        continuous, log scale (min > 0)
    lr=double(0.01, 0.1, step=0.01)   quantized; grid needs a step for doubles
    epochs=int(5, 50)                 integers; optional step=N and log
    kind=categorical(mlp, gbm)        a list of values, compared as text
    units=discrete(32, 64, 128)       a list of numbers

Parameters that are not tuned keep their recorded defaults; ``--fixed name=value`` overrides one.
Nothing here imports optuna, kubernetes or ipywidgets.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import NbMagicError
from ..k8s_names import is_label

SPACE_TYPES = ("double", "int", "categorical", "discrete")  # a tuned parameter's kind of search space
ALGORITHMS = ("random", "grid", "bayesianoptimization", "tpe", "multivariate-tpe", "cmaes", "sobol")
GOALS = ("minimize", "maximize")
PARAM_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([A-Za-z-]+)\s*\((.*)\)\s*$", re.S)
MAXIMIZE_HINTS = ("acc", "auc", "f1", "r2", "score", "precision", "recall", "reward", "map", "ndcg")
# recorded Python type -> tuning types that fit it
FITS = {
    "float": ("double", "int", "discrete", "categorical"),
    "int": ("int", "discrete", "categorical"),
    "bool": ("categorical",),
    "str": ("categorical",),
}


class TuneError(NbMagicError):
    """The search space or the experiment options are not usable."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise TuneError(f"{what}: {text!r} is not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise TuneError(f"{what}: {text!r} is not a finite number")
    return value


def _fmt(value: Any) -> str:
    """Numbers as short text (Katib's feasibleSpace and the --param syntax take strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _split(body: str) -> list[str]:
    """Split ``a, b, "c, d"`` on commas outside quotes; strip spaces and quotes."""
    items, current, quote = [], "", ""
    for ch in body:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if quote:
        raise TuneError(f"unclosed quote in {body!r}")
    if current.strip() or items:
        items.append(current.strip())
    return items


@dataclass(frozen=True)
class ParameterSpace:
    """One tuned parameter: a range (double/int) or a list of values (categorical/discrete)."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[str, ...] = ()

    def validate(self, algorithm: str | None = None) -> ParameterSpace:
        """Return self if usable (with ints normalised), else raise one line naming the parameter."""
        where = f"parameter {self.name!r}"
        if self.type not in SPACE_TYPES:
            raise TuneError(f"{where}: unknown type {self.type!r} (use {', '.join(SPACE_TYPES)})")
        if self.type in ("categorical", "discrete"):
            if not self.values:
                raise TuneError(f"{where}: empty list of values")
            if len(set(self.values)) != len(self.values):
                raise TuneError(f"{where}: repeated values in {list(self.values)}")
            if self.type == "discrete":
                for v in self.values:
                    _number(v, where)
            return self
        if self.min is None or self.max is None:
            raise TuneError(f"{where}: {self.type} needs min and max")
        lo, hi = float(self.min), float(self.max)
        if lo > hi:
            raise TuneError(f"{where}: min {_fmt(self.min)} > max {_fmt(self.max)}")
        if self.log and lo <= 0:
            raise TuneError(f"{where}: log scale needs min > 0 (got {_fmt(self.min)})")
        if self.step is not None:
            if self.step <= 0:
                raise TuneError(f"{where}: step must be > 0 (got {_fmt(self.step)})")
            if self.log:
                raise TuneError(f"{where}: use either log or step, not both")
        if self.type == "int":
            for what, v in (("min", self.min), ("max", self.max), ("step", self.step)):
                if v is not None and not float(v).is_integer():
                    raise TuneError(f"{where}: int {what} must be a whole number (got {_fmt(v)})")
            return replace(
                self, min=int(self.min), max=int(self.max), step=None if self.step is None else int(self.step)
            )
        if algorithm == "grid" and self.step is None:
            raise TuneError(f"{where}: grid over a continuous range needs a step, e.g. double(0.01,0.1,step=0.01)")
        return replace(self, min=lo, max=hi, step=None if self.step is None else float(self.step))

    def grid_values(self) -> list[Any]:
        """Every value a grid search visits (ints step 1 unless a step is given)."""
        if self.type in ("categorical", "discrete"):
            return [self.cast(v) for v in self.values]
        step = self.step if self.step is not None else 1
        count = int(math.floor((float(self.max) - float(self.min)) / step + 1e-9)) + 1
        return [self.cast(self.min + i * step) for i in range(count)]

    def cast(self, value: Any) -> Any:
        """A value of this space as Python (discrete -> int or float, int -> int, double -> float)."""
        if self.type == "categorical":
            return str(value)
        if self.type == "int":
            return int(round(float(value)))
        number = float(value)
        if self.type == "discrete" and all(float(v).is_integer() for v in self.values):
            return int(number)
        return round(number, 12) if self.step is not None else number

    def to_text(self) -> str:
        """The ``--param`` text that parses back to this space."""
        if self.type in ("categorical", "discrete"):
            inner = ", ".join(f'"{v}"' if ("," in v or " " in v or not v) else v for v in self.values)
        else:
            parts = [_fmt(self.min), _fmt(self.max)]
            if self.log:
                parts.append("log")
            if self.step is not None:
                parts.append(f"step={_fmt(self.step)}")
            inner = ", ".join(parts)
        return f"{self.name}={self.type}({inner})"


def parse_param(text: str) -> ParameterSpace:
    """Parse one ``name=type(args)`` (see the module docstring)."""
    match = PARAM_RE.match(text or "")
    if not match:
        raise TuneError(f"--param {text!r}: expected name=type(...), e.g. lr=double(1e-4,1e-1,log)")
    name, kind, body = match.group(1), match.group(2).lower(), match.group(3)
    where = f"parameter {name!r}"
    if kind not in SPACE_TYPES:
        raise TuneError(f"{where}: unknown type {kind!r} (use {', '.join(SPACE_TYPES)})")
    items = _split(body)
    if kind in ("categorical", "discrete"):
        return ParameterSpace(name, kind, values=tuple(items)).validate()
    numbers, step, log = [], None, False
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if item.strip().lower() == "log":
            log = True
        elif eq and key == "step":
            step = _number(value.strip(), f"{where} step")
        elif eq and key == "log":
            log = value.strip().lower() in ("1", "true", "yes")
        elif eq and key in ("min", "max"):
            numbers.append((key, _number(value.strip(), f"{where} {key}")))
        elif not eq:
            numbers.append(("", _number(item, where)))
        else:
            raise TuneError(f"{where}: unknown option {key!r} (use min, max, step, log)")
    named = {k: v for k, v in numbers if k}
    positional = [v for k, v in numbers if not k]
    lo = named.get("min", positional.pop(0) if positional else None)
    hi = named.get("max", positional.pop(0) if positional else None)
    if positional:
        raise TuneError(f"{where}: too many numbers in {kind}({body})")
    return ParameterSpace(name, kind, lo, hi, step, log).validate()


def parse_fixed(text: str) -> tuple[str, str]:
    """Parse ``name=value`` from ``--fixed``."""
    name, eq, value = (text or "").partition("=")
    if not eq or not name.strip().isidentifier():
        raise TuneError(f"--fixed {text!r}: expected name=value")
    return name.strip(), value.strip()


EARLY_STOPPING = (None, "medianstop")


@dataclass(frozen=True)
class ExperimentSpec:
    """A tuning experiment: what to vary, what to optimise, how, and how many trials."""

    parameters: tuple[ParameterSpace, ...]
    objective: str
    goal: str = "minimize"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    additional_metrics: tuple[str, ...] = ()
    algorithm: str = "tpe"
    max_trials: int = 12
    parallel_trials: int = 1
    max_failed_trials: int = 3
    seed: int | None = None
    name: str = ""
    early_stopping: str | None = None  # "medianstop": stop trials whose reported values trail the median
    min_trials: int = 3  # medianstop: finished trials needed before any trial is stopped
    start_step: int = 4  # medianstop: values a trial reports before it can be stopped

    def validate(self) -> ExperimentSpec:
        """Checks that need no recorded pipeline; returns the spec with normalised parameters."""
        if not self.parameters:
            raise TuneError("no parameter to tune: give at least one --param name=type(...)")
        names = [p.name for p in self.parameters]
        for name in names:
            if names.count(name) > 1:
                raise TuneError(f"parameter {name!r} is given twice")
            if name in self.fixed:
                raise TuneError(f"parameter {name!r} is both tuned and fixed")
        if self.algorithm not in ALGORITHMS:
            raise TuneError(f"--algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.goal not in GOALS:
            raise TuneError(f"--goal {self.goal!r}: use minimize or maximize")
        if not self.objective:
            raise TuneError("--objective is empty: name a recorded metric")
        if self.objective in self.additional_metrics:
            raise TuneError(f"--metrics: {self.objective!r} is already the objective")
        for what, value, low in (
            ("--max-trials", self.max_trials, 1),
            ("--parallel", self.parallel_trials, 1),
            ("--max-failed", self.max_failed_trials, 1),
            ("--min-trials", self.min_trials, 1),
            ("--start-step", self.start_step, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TuneError(f"{what} must be an integer >= {low} (got {value!r})")
        if self.early_stopping not in EARLY_STOPPING:
            raise TuneError(f"--early-stopping {self.early_stopping!r}: use medianstop (Katib's early stopping)")
        if self.name and not is_label(self.name, max_length=40):
            raise TuneError(
                f"--name {self.name!r}: use lowercase letters, digits and '-' (start and end alphanumeric, at most 40)"
            )
        params = tuple(p.validate(self.algorithm) for p in self.parameters)
        return replace(self, parameters=params, fixed=dict(self.fixed))

    def check_against(self, recorded: Mapping[str, Any], metrics: Iterable[str]) -> ExperimentSpec:
        """Check the spec against the recorded ``%%pipeline_parameters`` and ``%pipeline_metrics``."""
        spec = self.validate()
        metrics = tuple(metrics)
        if not recorded:
            raise TuneError("no pipeline parameters recorded: mark them with %%pipeline_parameters first")
        known = ", ".join(recorded)
        for p in spec.parameters:
            if p.name not in recorded:
                raise TuneError(f"unknown parameter {p.name!r} (recorded: {known})")
            kind = recorded[p.name].type
            if p.type not in FITS.get(kind, ("categorical",)):
                fits = ", ".join(FITS.get(kind, ()))
                raise TuneError(f"parameter {p.name!r} is {kind}; tune it as {fits}, not {p.type}")
            for value in p.values:
                recorded[p.name].coerce(value)
        fixed = {}
        for name, value in spec.fixed.items():
            if name not in recorded:
                raise TuneError(f"unknown parameter {name!r} in --fixed (recorded: {known})")
            fixed[name] = recorded[name].coerce(value)
        if not metrics:
            raise TuneError("no pipeline metrics recorded: mark one with %pipeline_metrics NAME first")
        for metric in (spec.objective, *spec.additional_metrics):
            if metric not in metrics:
                raise TuneError(f"metric {metric!r} is not recorded (metrics: {', '.join(metrics)})")
        return replace(spec, fixed=fixed)

    def key(self, pipeline: str = "", code: str = "") -> str:
        """A stable hash of what defines the study (space, fixed values, objective, algorithm, seed; the steps'
        code when given, so a changed notebook starts a new study instead of resuming results of the old code)."""
        data = {
            "pipeline": pipeline,
            "parameters": [asdict(p) for p in self.parameters],
            "fixed": {k: self.fixed[k] for k in sorted(self.fixed)},
            "objective": self.objective,
            "goal": self.goal,
            "algorithm": self.algorithm,
            "seed": self.seed,
        }
        if code:
            data["code"] = code
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def experiment_name(self, pipeline: str = "pipeline", code: str = "") -> str:
        """``self.name`` or ``<pipeline>-<key>`` (a valid Katib / file name)."""
        if self.name:
            return self.name
        base = re.sub(r"[^a-z0-9-]+", "-", pipeline.lower()).strip("-")[:30].strip("-") or "tune"
        return f"{base}-{self.key(pipeline, code)}"

    def to_args(self) -> list[str]:
        """The ``%katib`` arguments that build this spec (shown by the form, handy for VS Code users)."""
        args = [
            "--algorithm",
            self.algorithm,
            "--objective",
            self.objective,
            "--goal",
            self.goal,
            "--max-trials",
            str(self.max_trials),
            "--parallel",
            str(self.parallel_trials),
            "--max-failed",
            str(self.max_failed_trials),
        ]
        for p in self.parameters:
            args += ["--param", p.to_text()]
        for name, value in self.fixed.items():
            args += ["--fixed", f"{name}={value}"]
        if self.additional_metrics:
            args += ["--metrics", ",".join(self.additional_metrics)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.name:
            args += ["--name", self.name]
        if self.early_stopping:
            args += ["--early-stopping", self.early_stopping]
            args += ["--min-trials", str(self.min_trials), "--start-step", str(self.start_step)]
        return args

    def trial_values(self, suggested: Mapping[str, Any], recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Recorded defaults, then fixed values, then a trial's suggested ones, each in its recorded type."""
        values = {name: p.default for name, p in (recorded or {}).items()}
        values.update(self.fixed)
        for p in self.parameters:
            raw = suggested[p.name]
            if recorded and p.name in recorded:
                values[p.name] = recorded[p.name].coerce(raw if p.type != "categorical" else str(raw))
            else:
                values[p.name] = p.cast(raw)
        return values


def guess_goal(metric: str) -> str:
    """maximize for accuracy-like names, minimize otherwise (loss, error, ...)."""
    lowered = metric.lower()
    if any(word in lowered for word in ("loss", "err", "mse", "mae", "rmse")):
        return "minimize"
    return "maximize" if any(word in lowered for word in MAXIMIZE_HINTS) else "minimize"


def suggest_space(parameter: Any) -> ParameterSpace:
    """A starting range for a recorded ``Parameter`` (the form's pre-filled row)."""
    name, kind, default = parameter.name, parameter.type, parameter.default
    if kind == "float":
        if default > 0:
            return ParameterSpace(name, "double", default / 10, default * 10, log=True)
        return ParameterSpace(name, "double", min(default, 0.0), max(default, 0.0) + 1.0)
    if kind == "int":
        if default > 0:
            return ParameterSpace(name, "int", max(1, default // 2), default * 2)
        return ParameterSpace(name, "int", default, default + 10)
    if kind == "bool":
        return ParameterSpace(name, "categorical", values=("True", "False"))
    return ParameterSpace(name, "categorical", values=(str(default),))


def spec_from_recorded(parameters: Mapping[str, Any], metrics: Iterable[str]) -> ExperimentSpec:
    """Defaults for the form: numeric parameters tuned around their defaults, the rest fixed."""
    metrics = tuple(metrics)
    tuned = tuple(suggest_space(p) for p in parameters.values() if p.type in ("float", "int"))
    fixed = {p.name: p.default for p in parameters.values() if p.type not in ("float", "int")}
    objective = metrics[0] if metrics else ""
    return ExperimentSpec(
        parameters=tuned, objective=objective, goal=guess_goal(objective) if objective else "minimize", fixed=fixed
    )
