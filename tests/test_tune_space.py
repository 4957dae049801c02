"""The search-space syntax and experiment validation (pure data, no kernel)."""

from __future__ import annotations

import pytest

from nbmagic.errors import NbMagicError
from nbmagic.pipeline.model import Parameter
from nbmagic.tune.space import ExperimentSpec, ParameterSpace, parse_param, spec_from_recorded

RECORDED = {
    "lr": Parameter("lr", 0.01, "float"),
    "epochs": Parameter("epochs", 20, "int"),
    "kind": Parameter("kind", "mlp", "str"),
    "units": Parameter("units", 64, "int"),
    "shuffle": Parameter("shuffle", True, "bool"),
}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr=double(1e-4,1e-1,log)", ParameterSpace("lr", "double", 1e-4, 0.1, log=True)),
        ("epochs=int(5, 50)", ParameterSpace("epochs", "int", 5, 50)),
        ("kind=categorical(mlp,gbm)", ParameterSpace("kind", "categorical", values=("mlp", "gbm"))),
        ("units=discrete(32,64,128)", ParameterSpace("units", "discrete", values=("32", "64", "128"))),
        ("lr=double(0.01,0.1,step=0.01)", ParameterSpace("lr", "double", 0.01, 0.1, step=0.01)),
        ("lr = double(min=0.5, max=2)", ParameterSpace("lr", "double", 0.5, 2.0)),
        ('kind=categorical("a, b", c)', ParameterSpace("kind", "categorical", values=("a, b", "c"))),
    ],
)
def test_parse_param_and_round_trip(text, expected):
    parsed = parse_param(text)
    assert parsed == expected
    assert parse_param(parsed.to_text()) == parsed


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr=double(0.1,0.01)", "parameter 'lr': min 0.1 > max 0.01"),
        ("kind=categorical()", "parameter 'kind': empty list"),
        ("lr=double(0,1,log)", "log scale needs min > 0"),
        ("epochs=int(1.5,4)", "whole number"),
        ("units=discrete(1,x)", "'x' is not a number"),
        ("lr=float(1,2)", "unknown type 'float'"),
        ("lr", "expected name=type(...)"),
        ("lr=double(1,2,3)", "too many numbers"),
    ],
)
def test_parse_errors_are_one_line_and_name_the_parameter(text, fragment):
    with pytest.raises(NbMagicError) as info:
        parse_param(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def spec(*params, **kw):
    kw.setdefault("objective", "val_loss")
    return ExperimentSpec(parameters=tuple(parse_param(p) for p in params), **kw)


def test_grid_needs_a_step_for_continuous_ranges_only():
    with pytest.raises(NbMagicError, match="parameter 'lr': grid over a continuous range needs a step"):
        spec("lr=double(0.01,0.1)", algorithm="grid").validate()
    ok = spec("lr=double(0.01,0.03,step=0.01)", "epochs=int(1,3)", algorithm="grid").validate()
    assert ok.parameters[0].grid_values() == [0.01, 0.02, 0.03]
    assert ok.parameters[1].grid_values() == [1, 2, 3]


def test_check_against_recorded_pipeline():
    good = spec(
        "lr=double(1e-4,1e-1,log)", "units=discrete(32,64)", "shuffle=categorical(true,false)", fixed={"epochs": "7"}
    ).check_against(RECORDED, ["val_loss", "acc"])
    assert good.fixed == {"epochs": 7}
    cases = [
        (spec("depth=int(1,3)"), "unknown parameter 'depth' (recorded: lr, epochs, kind, units, shuffle)"),
        (spec("lr=double(0.1,1)", objective="accuracy"), "metric 'accuracy' is not recorded (metrics: val_loss, acc)"),
        (spec("epochs=double(1,3)"), "parameter 'epochs' is int; tune it as int, discrete, categorical, not double"),
        (spec("lr=double(0.1,1)", fixed={"nope": 1}), "unknown parameter 'nope' in --fixed"),
        (spec("units=categorical(a,b)"), "parameter 'units' is int"),
        (spec(), "no parameter to tune"),
        (spec("lr=double(0.1,1)", algorithm="hyperopt"), "--algorithm 'hyperopt'"),
        (spec("lr=double(0.1,1)", max_trials=0), "--max-trials must be an integer >= 1"),
        (spec("lr=double(0.1,1)", name="Bad_Name"), "--name 'Bad_Name'"),
        (spec("lr=double(0.1,1)", additional_metrics=("val_loss",)), "already the objective"),
    ]
    for bad, message in cases:
        with pytest.raises(NbMagicError) as info:
            bad.check_against(RECORDED, ["val_loss", "acc"])
        assert message in str(info.value)
    with pytest.raises(NbMagicError, match="no pipeline parameters recorded"):
        spec("lr=double(0.1,1)").check_against({}, ["val_loss"])
    with pytest.raises(NbMagicError, match="no pipeline metrics recorded"):
        spec("lr=double(0.1,1)").check_against(RECORDED, [])


def test_trial_values_take_the_recorded_types():
    s = spec(
        "lr=double(1e-4,1e-1,log)", "units=discrete(32,64)", "shuffle=categorical(True,False)", "epochs=int(1,5)"
    ).check_against(RECORDED, ["val_loss"])
    values = s.trial_values({"lr": 0.05, "units": 64, "shuffle": "False", "epochs": 3}, RECORDED)
    assert values == {"lr": 0.05, "units": 64, "shuffle": False, "epochs": 3, "kind": "mlp"}
    assert [type(values[k]) for k in ("lr", "units", "shuffle", "epochs")] == [float, int, bool, int]


def test_spec_from_recorded_defaults_are_valid_and_key_is_stable():
    defaults = spec_from_recorded(RECORDED, ["val_loss", "acc"])
    assert [p.name for p in defaults.parameters] == ["lr", "epochs", "units"]
    assert defaults.fixed == {"kind": "mlp", "shuffle": True}
    assert defaults.objective == "val_loss" and defaults.goal == "minimize"
    checked = defaults.check_against(RECORDED, ["val_loss", "acc"])
    assert spec_from_recorded(RECORDED, ["accuracy"]).goal == "maximize"
    assert checked.key("p") == defaults.check_against(RECORDED, ["val_loss"]).key("p")
    assert checked.key("p") != checked.key("other")
    assert checked.experiment_name("My_Pipeline").startswith("my-pipeline-")
