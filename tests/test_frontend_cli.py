"""The command line's polish: several --param after one flag, --version, -o suffixes, no machine paths."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nbmagic.cli import build_parser, main


@pytest.fixture
def notebook(tmp_path):
    path = tmp_path / "demo.ipynb"
    cells = ["%%pipeline_parameters\na = 1\nb = 2", "%%step add\ns = a + b", "%pipeline_metrics s"]
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), path)
    return path


def test_several_params_after_one_flag(notebook):
    args = build_parser().parse_args(["run", str(notebook), "--param", "a=5", "b=7", "--param", "a=6"])
    assert args.param == ["a=5", "b=7", "a=6"]


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("nbmagic ")


def test_an_unknown_output_suffix_is_refused(notebook, tmp_path, capsys):
    assert main(["compile", str(notebook), "-o", str(tmp_path / "x.txt")]) == 2
    assert "name a .yaml file (KFP IR) or a .py file" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def test_the_compiled_description_names_the_notebook_not_the_machine_path(notebook, tmp_path):
    assert main(["compile", str(notebook), "-o", str(tmp_path / "p.yaml")]) == 0
    text = (tmp_path / "p.yaml").read_text()
    assert "Compiled by nbmagic from demo.ipynb." in text and str(tmp_path) not in text
