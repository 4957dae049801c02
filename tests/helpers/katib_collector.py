"""Katib's StdOut metrics collector and medianstop, re-implemented from their sources to check our lines.

Read from kubeflow/katib (pkg/metricscollector/v1beta1/file-metricscollector/file-metricscollector.go,
cmd/metricscollector/v1beta1/file-metricscollector/main.go, pkg/metricscollector/v1beta1/common/const.go,
pkg/controller.v1beta1/trial/trial_controller_util.go, pkg/earlystopping/v1beta1/medianstop/service.py,
pkg/webhook/v1beta1/pod/utils.go):

- the webhook wraps the primary container: ``sh -c "<args joined by spaces> 1>FILE 2>&1 [|| <early stopped
  or failed check>] && echo completed > DIR/$$$$.pid"`` (keeping a command's own ``sh -c``); stdout and stderr
  both land in the file the collector reads; the trial's process is a child of that shell;
- a line counts when it contains a metric's name; its first space-separated token is its time stamp if it
  parses as RFC 3339 (else the zero time); every match of the filter (default
  ``([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?([Ee][+-]?\\d+)?)``, Go's ASCII ``\\w``) whose name is a metric is a value;
- while the trial runs, each matching value of a stop rule's metric is parsed as a float (a failure ends
  the collector) and compared: for the objective, the best value so far; a rule with ``start_step`` is
  judged at that report only; the trial is stopped once every rule is met;
- a trial's observation: per metric min, max and latest (the value with the latest time stamp; on a tie the
  later line); the value Katib uses (best trial, suggestions) is the one the metric's strategy names; the
  experiment defaulter gives every metric without a strategy min (minimize) or max (maximize), the
  additional metrics too (pkg/apis/controller/experiments/v1beta1/experiment_defaults.go);
- medianstop's rule: the objective's values of each succeeded trial ordered by time, the first
  ``start_step`` of them averaged; with at least ``min_trials_required`` trials, the "median" of those
  averages, which the service computes as their mean; compared "greater" for minimize, "less" for maximize.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
ZERO_TIME = "0001-01-01T00:00:00Z"
UNAVAILABLE = "unavailable"
_RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


def wrap_command(command: list[str], metrics_file: str, early_stopping: bool = False) -> list[str]:
    """The primary container's command as Katib's webhook rewrites it for the StdOut collector, as the
    shell then receives it (Kubernetes has expanded ``$$`` to ``$`` outside ``$(...)`` references)."""
    shell, args = ["sh", "-c"], list(command)
    if args[:2] in (["sh", "-c"], ["bash", "-c"]):
        shell, args = args[:2], args[2:]
    folder = metrics_file.rsplit("/", 1)[0] if "/" in metrics_file else "."
    args.append(f"1>{metrics_file} 2>&1")
    if early_stopping:
        args += [
            "||",
            f"if test -f {folder}/$$$$.pid && [ $(head -n 1 {folder}/$$.pid) = early-stopped ]; "
            "then echo Training Container was Early Stopped; else echo Training Container was Failed; exit 1; fi",
        ]
    args += ["&&", f"echo completed > {folder}/$$$$.pid"]
    return [*shell, k8s_expand(" ".join(args))]


def k8s_expand(text: str) -> str:
    """Kubernetes' expansion of a container's command and args with no variables defined: ``$$`` is ``$``;
    a ``$(...)`` reference to an undefined variable stays as written."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            out.append(text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _time(token: str) -> datetime | None:
    """Go's ``time.Parse(time.RFC3339Nano, token)``, to the microsecond (Katib's database keeps six digits)."""
    match = _RFC3339_NANO.match(token)
    if not match:
        return None
    fraction, zone = match.group(1) or "", match.group(2)
    base = datetime.strptime(token[:19], "%Y-%m-%dT%H:%M:%S")
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    offset = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(f"{base.isoformat()}.{micro:06d}{offset}")


@dataclass
class MetricLog:
    timestamp: str
    name: str
    value: str


def parse_text_logs(text: str, metrics: list[str], filters: list[str] | None = None) -> list[MetricLog]:
    """``parseLogsInTextFormat`` + ``newObservationLog``."""
    regexps = [re.compile(f, re.ASCII) for f in (filters or [DEFAULT_FILTER])]
    logs: list[MetricLog] = []
    for line in text.split("\n"):
        if not any(m in line for m in metrics):
            continue
        timestamp = ZERO_TIME
        parts = line.split(" ", 1)
        if len(parts) == 2 and _time(parts[0]) is not None:
            timestamp = parts[0]
        for regexp in regexps:
            for match in regexp.finditer(line):
                name, value = match.group(1).strip(), match.group(2).strip()
                if name in metrics:
                    logs.append(MetricLog(timestamp, name, value))
    if not any(log.name == metrics[0] for log in logs):
        return [MetricLog(ZERO_TIME, metrics[0], UNAVAILABLE)]
    return logs


def metric_strategies(experiment: dict) -> dict[str, str]:
    """The experiment's ``metricStrategies`` as Katib's defaulter completes them: metric name -> min/max/latest."""
    objective = experiment["spec"]["objective"]
    given = {s["name"]: s["value"] for s in objective.get("metricStrategies") or []}
    default = {"minimize": "min", "maximize": "max"}.get(objective.get("type"), "latest")
    for name in [objective["objectiveMetricName"], *(objective.get("additionalMetricNames") or [])]:
        given.setdefault(name, default)
    return given


def observation(
    logs: list[MetricLog], metrics: list[str], strategies: dict[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """``getMetrics``: min, max and latest per metric; with ``strategies`` also ``value``, the one Katib uses."""
    found = {m: {"min": UNAVAILABLE, "max": UNAVAILABLE, "latest": UNAVAILABLE} for m in metrics}
    latest_at: dict[str, datetime] = {}
    for log in logs:
        if log.name not in found:
            continue
        metric = found[log.name]
        try:
            number = float(log.value)
        except ValueError:
            number = None
        if number is not None:
            if metric["min"] == UNAVAILABLE:
                metric["min"] = metric["max"] = log.value
            elif number < float(metric["min"]):
                metric["min"] = log.value
            elif number > float(metric["max"]):
                metric["max"] = log.value
        at = _time(log.timestamp) or datetime.fromisoformat("0001-01-01T00:00:00+00:00")
        if log.name not in latest_at or not latest_at[log.name] > at:
            latest_at[log.name] = at
            metric["latest"] = log.value
    for name, metric in found.items():
        if strategies and name in strategies:
            metric["value"] = metric[strategies[name]]
    return found


@dataclass
class StopRule:
    name: str
    value: float
    comparison: str  # "less" | "greater" | "equal"
    start_step: int = 0


class CollectorFailed(Exception):
    """Where Katib's collector would end with klog.Fatalf."""


def early_stopped_at(text: str, rules: list[StopRule], objective: str, goal: str) -> int | None:
    """``watchMetricsFile`` over the lines: the 1-based number of the line after which the trial is
    stopped, or None. Raises :class:`CollectorFailed` where the collector would crash."""
    rules = list(rules)
    start_steps = {r.name: r.start_step for r in rules if r.start_step}
    regexps = [re.compile(DEFAULT_FILTER, re.ASCII)]
    best: float | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not any(r.name in line for r in rules):
            continue
        for regexp in regexps:
            for match in regexp.finditer(line):
                name = match.group(1).strip()
                try:
                    value = float(match.group(2).strip())
                except ValueError:
                    raise CollectorFailed(f"line {number}: cannot parse {match.group(2)!r} of {name!r}") from None
                for rule in list(rules):
                    if rule.name != name:
                        continue
                    judged = value
                    if name == objective:
                        if (
                            best is None
                            or (goal == "maximize" and value > best)
                            or (goal == "minimize" and value < best)
                        ):
                            best = value
                        judged = best
                    if name in start_steps:
                        start_steps[name] -= 1
                        if start_steps[name] != 0:
                            continue
                    if (
                        (rule.comparison == "equal" and judged == rule.value)
                        or (rule.comparison == "less" and judged < rule.value)
                        or (rule.comparison == "greater" and judged > rule.value)
                    ):
                        rules.remove(rule)
        if not rules:
            return number
    return None


def medianstop_rule(
    trials: list[list[MetricLog]], objective: str, goal: str, min_trials: int, start_step: int
) -> StopRule | None:
    """The rule medianstop gives new trials, from succeeded trials' observation logs."""
    averages = []
    for logs in trials:
        ordered = sorted((log for log in logs if log.name == objective), key=lambda log: _time(log.timestamp))
        first = ordered[:start_step]
        averages.append(sum(float(log.value) for log in first) / len(first))
    if len(averages) < min_trials:
        return None
    comparison = "less" if goal == "maximize" else "greater"
    return StopRule(objective, sum(averages) / len(averages), comparison, start_step)  # the service's "median"
