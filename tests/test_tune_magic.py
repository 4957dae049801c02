"""%katib in an IPython shell on the real local runner; the form and the arguments build the same spec;
the live view's HTML."""

from __future__ import annotations

import shlex

import pytest

from helpers.shell import run_cell
from helpers.tune_runs import finished_local_experiment
from nbmagic.arguments import parse
from nbmagic.magics.tune import TuneMagics, build_spec
from nbmagic.pipeline.model import Parameter
from nbmagic.tune.form import TuneForm
from nbmagic.tune.view import render_html

CELLS = [
    "%%pipeline_parameters\nlr = 0.01\nepochs = 10\nkind = 'mlp'",
    "%%step load\ndata = list(range(50))",
    "%%step train\nif kind == 'boom':\n    raise RuntimeError('boom')\nval_loss = (lr - 0.03) ** 2 + epochs * 1e-5 + len(data) * 0\nacc = 1 - val_loss",
    "%pipeline_metrics val_loss acc",
]


def record(ip):
    for cell in CELLS:
        result = run_cell(ip, cell)
        assert result.success, result.error_in_exec


def test_katib_runs_trials_on_the_local_runner_with_cached_upstream_steps(ip, capsys):
    record(ip)
    result = run_cell(
        ip,
        'exp = %katib --max-trials 4 --param "lr=double(1e-3,1e-1,log)" '
        '--param "epochs=int(5,20)" --fixed kind=mlp --seed 2',
    )
    assert result.success, result.error_in_exec
    exp = ip.user_ns["exp"].wait(120)
    assert exp.status == "succeeded" and len(exp.trials) == 4
    assert [t.cached_steps for t in exp.trials] == [0, 1, 1, 1]  # `load` reads no tuned parameter
    assert exp.best.objective == min(t.objective for t in exp.trials) and exp.best.run_id
    # the same experiment again resumes: nothing left to run
    run_cell(
        ip,
        'again = %katib --max-trials 4 --param "lr=double(1e-3,1e-1,log)" '
        '--param "epochs=int(5,20)" --fixed kind=mlp --seed 2',
    )
    again = ip.user_ns["again"].wait(30)
    assert again.resumed == 4 and len(again.trials) == 4


def test_failing_trials_stop_at_max_failed(ip):
    record(ip)
    run_cell(ip, 'exp = %katib --max-trials 10 --max-failed 2 --param "kind=categorical(boom)"')
    exp = ip.user_ns["exp"].wait(120)
    assert exp.status == "failed" and len(exp.trials) == 2
    assert all("step 'train'" in t.error and "boom" in t.error for t in exp.trials)


@pytest.mark.parametrize(
    "line, message",
    [
        ('--param "depth=int(1,3)"', "unknown parameter 'depth'"),
        ('--param "lr=double(1,2)" --objective f1', "metric 'f1' is not recorded"),
        ('--param "lr=double(0.1,0.01)"', "parameter 'lr': min 0.1 > max 0.01"),
        ('--algorithm grid --param "lr=double(0.01,0.1)"', "grid over a continuous range needs a step"),
    ],
)
def test_bad_input_is_a_one_line_usage_error(ip, capsys, line, message):
    record(ip)
    result = run_cell(ip, f"%katib {line}")
    assert not result.success and message in str(result.error_in_exec)


def test_no_parameters_recorded(ip):
    run_cell(ip, "%%step only\nx = 1")
    result = run_cell(ip, "%katib")
    assert not result.success and "no pipeline parameters recorded" in str(result.error_in_exec)


def test_katib_help_documents_the_syntax(ip):
    doc = TuneMagics.katib.__doc__
    assert "lr=double(1e-4,1e-1,log)" in doc and "categorical(" in doc and "discrete(" in doc


RECORDED = {
    "lr": Parameter("lr", 0.01, "float"),
    "epochs": Parameter("epochs", 10, "int"),
    "kind": Parameter("kind", "mlp", "str"),
    "units": Parameter("units", 64, "int"),
}


class Plan:
    parameters, metrics, name = RECORDED, ("val_loss", "acc"), "p"


def test_form_and_arguments_build_the_same_spec():
    started = []
    form = TuneForm(RECORDED, ["val_loss", "acc"], started.append)
    form.row("lr").min.value, form.row("lr").max.value, form.row("lr").log.value = "0.0001", "0.1", True
    form.row("epochs").min.value, form.row("epochs").max.value = "5", "50"
    form.row("kind").tune.value = True
    form.row("kind").type.value, form.row("kind").values.value = "categorical", "mlp, gbm"
    form.row("units").type.value, form.row("units").values.value = "discrete", "32,64,128"
    form.algorithm.value, form.max_trials.value, form.parallel.value = "multivariate-tpe", 30, 2
    form.additional.value = ("acc",)
    form.run_button.click()
    assert len(started) == 1
    line = (
        "--algorithm multivariate-tpe --max-trials 30 --parallel 2 --objective val_loss --goal minimize "
        '--metrics acc --param "lr=double(1e-4,1e-1,log)" --param "epochs=int(5,50)" '
        '--param "kind=categorical(mlp,gbm)" --param "units=discrete(32,64,128)"'
    )
    args = parse(TuneMagics.katib, line)
    from_args = build_spec(args, Plan).check_against(RECORDED, Plan.metrics)
    assert started[0] == from_args
    # the form shows the equivalent magic line, which parses back to the same spec
    shown = form.command.value.removeprefix("<code>%katib ").removesuffix("</code>").replace("&quot;", '"')
    shown = shown.replace("&#x27;", "'")
    assert (
        build_spec(parse(TuneMagics.katib, " ".join(shlex.quote(a) for a in shlex.split(shown))), Plan).check_against(
            RECORDED, Plan.metrics
        )
        == from_args
    )


def test_form_shows_mistakes_inline_and_does_not_run():
    started = []
    form = TuneForm(RECORDED, ["val_loss"], started.append)
    form.row("lr").min.value, form.row("lr").max.value = "1", "0.5"
    form.row("kind").tune.value = True
    form.row("kind").values.value = ""
    form.run_button.click()
    assert started == []
    assert "min 1 &gt; max 0.5" in form.row("lr").error.value
    assert "empty list of values" in form.row("kind").error.value
    assert form.row("epochs").error.value == ""
    form.row("lr").max.value, form.row("kind").values.value = "2", "mlp"
    form.algorithm.value = "grid"
    form.row("lr").log.value = False
    form.run_button.click()
    assert "grid over a continuous range needs a step" in form.row("lr").error.value and started == []
    form.row("lr").step.value = "0.5"
    form.run_button.click()
    assert len(started) == 1 and form.error.value == ""


def test_live_view_html_has_table_best_progress_and_plots(tmp_path):
    exp = finished_local_experiment(tmp_path, [0.5, None, 0.2, 0.9, 0.3])
    page = render_html(exp)
    assert 'data-status="succeeded"' in page and "5/5 finished" in page
    assert "best: trial 2, loss = 0.2" in page
    assert page.count("<tr") == 6 and "ValueError: x &lt; 0" in page
    assert page.count("<polyline") == 4 + 1  # four finished trials + the best-so-far line
    assert page.count("<circle") == 4
