"""``report(val_loss=..., step=epoch)``: a step's intermediate values, for early stopping.

In a local tuning trial the values go to a file the experiment watches (Optuna's ``trial.report`` /
``should_prune``); when the trial is pruned, the next ``report`` raises :class:`Pruned` and the step ends
as "pruned". Anywhere else (a KFP pod, a Katib trial, an interactive cell) it prints one line in the format
Katib's StdOut metrics collector reads: an RFC 3339 timestamp, then ``name=value`` pairs.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime, timezone
from decimal import Decimal

REPORT_FILE = "NBMAGIC_REPORT_FILE"  # set by the local runner for each step it runs


class Pruned(Exception):
    """The tuning experiment stopped this trial early; the step ends, its outputs are not cached."""


def prune_path(report_file: str) -> str:
    return report_file + ".prune"


def watched_path(report_file: str) -> str:
    """Present while a tuning experiment follows the file; holds the number of the first reported value
    that can stop the trial: from it on, ``report`` waits for each value's decision (0: never)."""
    return report_file + ".watched"


def ack_path(report_file: str) -> str:
    """How many reported lines the experiment has decided on."""
    return report_file + ".ack"


ACK_TIMEOUT = 2.0  # seconds a report waits for the experiment's decision at most
_written: dict[str, int] = {}


_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_NUMBER = r"-?\d+(?:\.\d+)?"
# exactly what katib_line writes: a report line a step printed can be told from any other output
KATIB_LINE = re.compile(
    rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{{1,9}})?Z (?:epoch \d+: )?{_NAME}={_NUMBER}(?: {_NAME}={_NUMBER})*$"
)


def katib_line(metrics: dict[str, float], step: int | None, at: float | None = None) -> str:
    """``2026-01-01T00:00:00.250000Z epoch 3: val_loss=0.25``, the line Katib's StdOut collector reads.

    The time stamp comes first, with microseconds: Katib orders a trial's values by it (the latest is the
    trial's result; medianstop averages the first ``start_step``), and several values a second must keep
    their order. Numbers carry no exponent: older Katib filters read ``-?\\d+(\\.\\d+)?`` only.
    """
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    pairs = " ".join(f"{name}={_plain(value)}" for name, value in metrics.items())
    return f"{stamp} {'' if step is None else f'epoch {step}: '}{pairs}"


def _plain(value: float) -> str:
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def report(step: int | None = None, **metrics: float) -> None:
    """Report intermediate values (``report(val_loss=0.3, step=epoch)``); raises :class:`Pruned` if the
    experiment has stopped this trial."""
    if not metrics:
        raise TypeError("report() needs at least one metric: report(val_loss=..., step=epoch)")
    values: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"report(): metric {name!r} is a {type(value).__name__}, not a number") from None
        if math.isnan(number) or math.isinf(number):
            raise ValueError(f"report(): metric {name!r} is {number}")
        values[name] = number
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise TypeError(f"report(): step must be an integer >= 0, not {step!r}")
    path = os.environ.get(REPORT_FILE)
    if not path:
        print(katib_line(values, step), flush=True)
        return
    with open(path, "a") as handle:
        handle.write(json.dumps({"step": step, "metrics": values, "at": time.time()}) + "\n")
    _written[path] = _written.get(path, 0) + 1
    if 0 < _wait_from(path) <= _written[path]:  # wait for the decision on this value (not a stale one)
        deadline = time.monotonic() + ACK_TIMEOUT
        while _acked(path) < _written[path] and time.monotonic() < deadline:
            time.sleep(0.002)
    if os.path.exists(prune_path(path)):
        raise Pruned(f"pruned at step {step}" if step is not None else "pruned")


def _acked(path: str) -> int:
    return _count_in(ack_path(path))


def _wait_from(path: str) -> int:
    return _count_in(watched_path(path))


def _count_in(file: str) -> int:
    """The count a file next to the report file holds; 0 while it is absent or not yet written whole."""
    try:
        with open(file) as handle:
            return int(handle.read() or 0)
    except (FileNotFoundError, ValueError):
        return 0
