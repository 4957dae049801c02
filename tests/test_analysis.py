"""What a cell reads and writes, after IPython's transformers."""

from __future__ import annotations

import pytest

from nbmagic.errors import PipelineError
from nbmagic.pipeline.analysis import analyze, to_python


def info(source: str):
    return analyze(to_python(source))


def test_reads_before_writes_in_order():
    result = info("y = x + 1\nx = 2\nz = x * y")
    assert result.reads == ["x"]
    assert result.writes == ["y", "x", "z"]


def test_augmented_assignment_reads_and_writes():
    result = info("total += step")
    assert result.reads == ["step", "total"]
    assert result.writes == ["total"]


def test_mutating_an_attribute_or_item_is_a_write_of_the_base():
    result = info("df['a'] = 1\nmodel.coef_ = None")
    assert set(result.reads) == {"df", "model"}
    assert set(result.writes) == {"df", "model"}


def test_imports_functions_and_classes_are_definitions():
    result = info("import numpy as np\nfrom os import path as p\ndef f(a):\n    return a + g\nclass K(Base):\n    pass")
    assert result.imports == {"np": "numpy", "p": "os"}
    assert set(result.definitions) == {"np", "p", "f", "K"}
    assert "g" in result.reads and "Base" in result.reads
    assert "a" not in result.reads


def test_builtins_and_comprehension_variables_are_not_reads():
    result = info("values = [len(v) for v in items if v]")
    assert result.reads == ["items"]


def test_ipython_syntax_is_transformed_not_a_syntax_error():
    result = info("%time X = data * 2\n!echo hi\nout = X")
    assert "data" in result.reads
    assert {"X", "out"} <= set(result.writes)
    assert result.uses_ipython


def test_capture_cell_magic_binds_its_variable_and_reads_its_body():
    result = info("%%capture captured\nprint(message)")
    assert result.reads == ["message"]
    assert "captured" in result.writes


def test_global_assignment_in_a_function_is_a_write():
    result = info("def setup():\n    global cfg\n    cfg = 1\nsetup()")
    assert "cfg" in result.writes


def test_star_import_is_rejected_with_the_module_named():
    with pytest.raises(PipelineError, match="from numpy import \\*"):
        info("from numpy import *")


def test_syntax_error_names_the_line():
    with pytest.raises(PipelineError, match="line 2"):
        analyze("x = 1\nx = = 2", "step 'bad'")


def test_throwaway_underscore_is_not_a_step_value():
    result = info("total = 0\nfor _ in range(3):\n    total += 1")
    assert "_" not in result.writes and "total" in result.writes


def test_function_globals_cover_decorators_defaults_body_and_nested_scopes():
    from nbmagic.pipeline.analysis import function_globals

    source = (
        "@cache(size)\n"
        "def f(x, k=K):\n"
        "    global counter\n"
        "    counter = 1\n"
        "    y = np.log(x)\n"
        "    class C:\n"
        "        z = helper\n"
        "    return [scale(v) for v in y] + list(map(lambda w: w * factor, y))\n"
    )
    assert function_globals(source) == [
        "cache",
        "size",
        "K",
        "counter",
        "np",
        "helper",
        "scale",
        "list",
        "map",
        "factor",
    ]
