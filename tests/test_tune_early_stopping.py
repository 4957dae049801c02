"""Early stopping: ``nbmagic.report()`` values feed Optuna's median pruner locally (trials end "pruned", their
step's outputs are not cached), and print Katib's StdOut metrics-collector lines elsewhere."""

from __future__ import annotations

import re

import pytest

from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan
from nbmagic.run.local import LocalRunner
from nbmagic.runtime.report import katib_line
from nbmagic.store.runs import RunStore
from nbmagic.tune.local import LocalExperiment, pipeline_trial_runner
from nbmagic.tune.space import ExperimentSpec, TuneError, parse_param

# Katib's StdOut collector: the default metric filter, and an RFC 3339 timestamp first on the line
KATIB_FILTER = re.compile(r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")  # microseconds: values keep their order


def test_report_outside_a_trial_prints_katib_stdout_lines(capsys):
    from nbmagic import report

    report(val_loss=1.5e-05, acc=0.75, step=3)
    line = capsys.readouterr().out.strip()
    assert RFC3339.match(line)
    assert {name: float(value) for name, value, *_ in KATIB_FILTER.findall(line)} == {"val_loss": 1.5e-05, "acc": 0.75}
    assert "epoch 3" in line


def test_katib_line_never_uses_exponents():
    line = katib_line({"loss": 1e-12, "big": 3e20}, None, at=0)
    assert line == "1970-01-01T00:00:00.000000Z loss=0.000000000001 big=300000000000000000000"


@pytest.mark.parametrize(
    "bad, message",
    [({"val_loss": "x"}, "not a number"), ({"val_loss": float("nan")}, "nan")],
)
def test_report_rejects_values_that_are_not_numbers(bad, message):
    from nbmagic import report

    with pytest.raises((TypeError, ValueError), match=message):
        report(**bad)


def test_early_stopping_settings_are_checked():
    with pytest.raises(TuneError, match="--early-stopping 'hyperband'"):
        ExperimentSpec((parse_param("c=double(0,6)"),), "loss", early_stopping="hyperband").validate()
    with pytest.raises(TuneError, match="--start-step"):
        ExperimentSpec((parse_param("c=double(0,6)"),), "loss", early_stopping="medianstop", start_step=0).validate()


EPOCHS = 8


def curve_plan(counter):
    """One training step: EPOCHS epochs of 50 ms, loss decaying towards (c - 3)^2, reported every epoch."""
    cells = [
        "%%pipeline_parameters\nc = 1.0\n",
        "%%step train\nimport time\nfrom nbmagic import report\n"
        "for epoch in range(8):\n"
        "    time.sleep(0.05)\n"
        f"    open({str(counter)!r}, 'a').write('epoch\\n')\n"
        "    loss = (c - 3.0) ** 2 + 4.0 / (epoch + 1)\n"
        "    report(loss=loss, step=epoch)\n",
        "%pipeline_metrics loss\n",
    ]
    return build_plan(read_cells([RawCell(s, i, f"cell {i}") for i, s in enumerate(cells, start=1)]))


@pytest.mark.slow
def test_medianstop_prunes_trials_cleanly(tmp_path):
    counter = tmp_path / "epochs.txt"
    store = RunStore()
    spec = ExperimentSpec(
        (parse_param("c=double(0,6)"),),
        "loss",
        algorithm="random",
        seed=1,
        max_trials=8,
        early_stopping="medianstop",
        min_trials=2,
        start_step=2,
    )
    runner = pipeline_trial_runner(curve_plan(counter), runner=LocalRunner(store, workers=2))
    exp = LocalExperiment(spec, runner, pipeline="curves", directory=tmp_path / "tune").start().wait(120)
    assert exp.done and exp.status == "succeeded"
    trials = exp.trials
    pruned = [t for t in trials if t.status == "pruned"]
    assert pruned, [(t.status, t.curve) for t in trials]
    assert all(t.status in ("succeeded", "pruned") for t in trials)
    epochs = counter.read_text().count("epoch\n")
    assert epochs < EPOCHS * len(trials)
    for t in trials:
        assert [step for step, _ in t.curve] == list(range(len(t.curve)))
        assert len(t.curve) == (EPOCHS if t.status == "succeeded" else len(t.curve))
    for t in pruned:
        assert len(t.curve) < EPOCHS
        run = store.get_run(t.run_id)
        assert run.status == "pruned"
        assert {row["step"]: row["state"] for row in store.step_rows(t.run_id)} == {"train": "pruned"}
        assert "stopped early" in t.error
    assert exp.best.trial not in [t.number for t in pruned]
    assert "pruned" in exp.summary()
    # a pruned step's outputs are not cached: the same parameters run the step again, to the end
    again = LocalRunner(store, workers=2).run(curve_plan(counter), pruned[0].parameters)
    assert again.status == "done" and again.steps["train"].status == "done"
    # resuming the study reads the pruned trials back as pruned, with their curves
    resumed = LocalExperiment(spec, runner, pipeline="curves", directory=tmp_path / "tune").start().wait(60)
    assert [(t.number, t.status, t.curve) for t in resumed.trials] == [(t.number, t.status, t.curve) for t in trials]


def test_form_field_and_katib_flags_build_the_same_early_stopping_spec():
    from nbmagic.arguments import parse
    from nbmagic.magics.tune import TuneMagics, build_spec
    from nbmagic.pipeline.model import Parameter
    from nbmagic.tune.form import TuneForm

    recorded = {"c": Parameter("c", 1.0, "float")}

    class Plan:
        parameters, metrics = recorded, ["loss"]

    started = []
    form = TuneForm(recorded, ["loss"], started.append)
    form.row("c").min.value, form.row("c").max.value, form.row("c").log.value = "0", "6", False
    form.early_stopping.value = "medianstop"
    form.run_button.click()
    line = '--param "c=double(0,6)" --objective loss --goal minimize --early-stopping medianstop'
    from_args = build_spec(parse(TuneMagics.katib, line), Plan).check_against(recorded, ["loss"])
    assert started == [from_args] and from_args.early_stopping == "medianstop"
    assert "--early-stopping medianstop --min-trials 3 --start-step 4" in form.command.value
    custom = parse(TuneMagics.katib, line + " --min-trials 5 --start-step 2")
    assert (build_spec(custom, Plan).min_trials, build_spec(custom, Plan).start_step) == (5, 2)


def test_live_view_shows_pruned_trials_and_their_curves():
    from nbmagic.tune.experiment import Experiment, Trial
    from nbmagic.tune.view import render_html

    spec = ExperimentSpec((parse_param("c=double(0,6)"),), "loss", early_stopping="medianstop").validate()
    exp = Experiment("curves", spec)
    exp._trials = [
        Trial(0, {"c": 3.0}, "succeeded", 0.5, {"loss": 0.5}, curve=[(0, 2.0), (1, 1.0), (2, 0.5)]),
        Trial(1, {"c": 0.5}, "pruned", None, curve=[(0, 4.0), (1, 3.5)], error="step 'train' stopped early"),
        Trial(2, {"c": 2.0}, "running", None, curve=[(0, 2.5)]),
    ]
    page = render_html(exp)
    assert "1 pruned" in page and 'class="nbmagic-curves"' in page
    assert page.count("<polyline") >= 3 and 'stroke-dasharray="4 3"' in page
    assert "<title>trial 1 (pruned)</title>" in page
    assert "1 pruned" in exp.summary()
