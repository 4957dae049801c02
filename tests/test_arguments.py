"""One argument reader: the same words and errors for a magic typed in a cell and a line re-read from a file."""

from __future__ import annotations

import pytest

from nbmagic.api import RUNS_ARGUMENTS
from nbmagic.arguments import ArgumentError, build_parser, magic_lines, parse, split, strip_comment
from nbmagic.errors import PipelineError
from nbmagic.pipeline.cells import RawCell, parse_config_line, parse_metrics_line, parse_step_line, read_cells


def test_comments_and_quotes_are_read_once():
    assert strip_comment("--param name='a # b'  # note") == "--param name='a # b'"
    assert strip_comment("--param tag=x#1") == "--param tag=x#1"
    assert split("--param \"lr=double(1e-4,1e-1,log)\" --where 'val_loss<0.3, status=done'  # try") == [
        "--param",
        "lr=double(1e-4,1e-1,log)",
        "--where",
        "val_loss<0.3, status=done",
    ]
    with pytest.raises(ArgumentError, match="No closing quotation"):
        split('--param "lr=1', "%katib")


def test_a_dash_value_is_the_option_s_value_unless_it_names_an_option():
    runs = build_parser("%runs", RUNS_ARGUMENTS)
    assert parse(runs, "--sort -val_loss -n 5").sort == "-val_loss"
    assert parse(runs, "-s -started").sort == "-started"
    with pytest.raises(ArgumentError, match="expected one argument"):
        parse(runs, "--sort -n 5")  # -n is --limit's short name, not a value


def test_usage_mistakes_are_one_line_naming_the_magic():
    runs = build_parser("%runs", RUNS_ARGUMENTS)
    with pytest.raises(ArgumentError) as caught:
        parse(runs, "--limit many")
    assert str(caught.value) == "%runs: argument --limit/-n: invalid int value: 'many'"
    from nbmagic.magics.pipeline import PipelineMagics

    with pytest.raises(ArgumentError, match=r"^%compile_run: unrecognized arguments: --bogus$"):
        parse(PipelineMagics.compile_run, "--bogus  # a comment is not an argument")


def test_lines_from_a_file_read_like_the_magic_line():
    name, after, settings = parse_step_line('train --after load --env "GREETING=hello world"  # the big one')
    assert (name, after, settings.env) == ("train", ("load",), (("GREETING", "hello world"),))
    assert parse_metrics_line("val_loss acc  # both") == ["val_loss", "acc"]
    assert parse_config_line("--retries 2 # pipeline-wide").retries == 2
    with pytest.raises(PipelineError, match=r"^%%step train --cpux 1: unrecognized arguments: --cpux 1$"):
        parse_step_line("train --cpux 1")
    source = "%pipeline_metrics val_loss # the objective\nx = 1\n%pipeline_config --retries 3\n"
    assert magic_lines("pipeline_metrics", source) == [" val_loss # the objective"]
    notebook = read_cells([RawCell(source, 0, "cell 1")])
    assert notebook.metrics == ["val_loss"] and notebook.defaults.retries == 3
