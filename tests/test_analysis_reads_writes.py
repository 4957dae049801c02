"""Review findings: names a cell reads and writes that the analysis missed or invented."""

from __future__ import annotations

from nbmagic.pipeline.analysis import analyze, to_python
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan


def info(source: str):
    return analyze(to_python(source))


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def test_match_capture_patterns_bind_names():
    result = info(
        "match cmd:\n"
        "    case [first, *others]:\n        r = first\n"
        "    case {'k': v, **extra}:\n        r = v\n"
        "    case Point(x=px) as pt:\n        r = px\n"
        "    case Color.RED:\n        r = 0\n"
    )
    assert result.reads == ["cmd", "Point", "Color"]
    assert {"first", "others", "v", "extra", "px", "pt", "r"} <= set(result.writes)


def test_a_step_with_a_match_statement_plans():
    plan = plan_of("%%step a\ncmd = [1, 2]\n", "%%step b\nmatch cmd:\n    case [p, q]:\n        acc = p + q\n")
    assert plan.step("b").inputs == {"cmd": "a"}


def test_del_of_a_name_reads_it_and_does_not_provide_it():
    result = info("del df")
    assert result.reads == ["df"]
    assert "df" not in result.writes
    plan = plan_of("%%step a\ndf = [1]\n", "%%step b\ndel df\n")
    assert plan.step("b").inputs == {"df": "a"}


def test_del_of_an_item_or_attribute_mutates_the_base():
    result = info("del d['x']\ndel model.cache")
    assert set(result.reads) == {"d", "model"}
    assert set(result.writes) == {"d", "model"}
    plan = plan_of("%%step a\nd = {'x': 1}\n", "%%step b\ndel d['x']\n", "%%step c\nn = len(d)\n")
    assert plan.step("c").inputs == {"d": "b"}


def test_walrus_inside_a_comprehension_binds_in_the_cell_not_a_read():
    result = info("ys = [y for x in xs if (y := x * 2)]")
    assert result.reads == ["xs"]
    assert set(result.writes) == {"ys", "y"}


def test_a_method_call_statement_mutates_its_object():
    result = info("model.fit(X, y)\nrows.append(1)\ndf['a'].fillna(0, inplace=True)")
    assert {"model", "rows", "df"} <= set(result.writes)
    assert {"model", "rows", "df", "X", "y"} <= set(result.reads)


def test_a_later_step_sees_the_object_a_step_fitted():
    plan = plan_of(
        "class M:\n    def fit(self):\n        self.fitted = True\n",
        "%%step build\nm = M()\n",
        "%%step train\nm.fit()\n",
        "%%step evaluate\nok = m.fitted\n",
    )
    assert plan.step("evaluate").inputs == {"m": "train"}
    assert "m" in plan.step("train").outputs


def test_calling_a_method_of_a_notebook_import_does_not_make_the_step_its_producer():
    plan = plan_of(
        "import random\n",
        "%%step a\nrandom.seed(0)\nx = 1\n",
        "%%step b\ny = random.random() + x\n",
    )
    assert plan.step("b").inputs == {"x": "a"}
    assert "import random" in plan.step("b").prelude
    assert "random" not in plan.step("a").writes  # a module is not a value the step keeps


def test_a_step_may_read_a_value_from_a_later_cell_it_runs_after():
    """The error for this case says "add --after"; doing so must work."""
    plan = plan_of("%%step report --after train\nprint(acc)\n", "%%step train\nacc = 0.5\n")
    assert [s.name for s in plan.steps] == ["train", "report"]
    assert plan.step("report").inputs == {"acc": "train"}
    assert "acc" in plan.step("train").outputs


def test_a_step_may_read_from_a_later_cell_through_a_chain_of_after():
    plan = plan_of("%%step c --after b\nz = x\n", "%%step b --after a\ny = 1\n", "%%step a\nx = 1\n")
    assert plan.step("c").inputs == {"x": "a"}


def test_a_global_a_function_assigns_before_reading_is_not_a_read():
    result = info("def init():\n    global CONFIG\n    CONFIG = {'a': 1}\n    return CONFIG\ncfg = init()\n")
    assert result.reads == []
    assert "CONFIG" in result.writes


def test_a_global_a_function_reads_before_assigning_is_a_read():
    result = info("def bump():\n    global counter\n    counter += 1\nbump()\n")
    assert result.reads == ["counter"]
