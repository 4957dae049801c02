"""Displays in every front end: a readable text/plain twin, colours from the theme, the form's fallbacks."""

from __future__ import annotations

import re

from helpers.shell import run_cell, run_ok
from helpers.tune_runs import finished_local_experiment
from nbmagic.magics.state import kernel_state
from nbmagic.pipeline.model import Parameter
from nbmagic.pipeline.render import plan_svg
from nbmagic.tune.form import COLUMNS, TuneForm
from nbmagic.tune.view import render, render_html

RECORDED = {"lr": Parameter("lr", 0.01, "float"), "kind": Parameter("kind", "a", "str")}


def finished_experiment(tmp_path):
    return finished_local_experiment(tmp_path, [0.5, None, 0.2, 0.9])


def test_the_tuning_view_has_a_readable_text_form(tmp_path):
    text = render(finished_experiment(tmp_path))["text/plain"]
    assert "4/4 finished" in text and "best: trial 2, loss=0.2, lr=" in text
    assert "trial 1 failed" in text and "ValueError: x < 0" in text
    assert len(text.splitlines()) == 2 + 4  # the header, the best, one line per trial
    numbers = re.findall(r"\d+\.\d+", text)
    assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 4 for n in numbers), text  # rounded, not 0.0034372…
    assert "<" not in text.replace("x < 0", "")  # no HTML and no `<IPython.core.display.HTML object>`


def test_the_tuning_view_follows_the_theme(tmp_path):
    page = render_html(finished_experiment(tmp_path))
    assert "#e8f4e8" not in page and "#ddd" not in page and "#444" not in page  # light-only colours are gone
    best_row = re.search(r'<tr style="background:([^"]+)">', page)
    assert best_row and best_row.group(1).startswith("rgba("), "the best row is a translucent tint"
    for svg in re.findall(r"<svg[^>]*>", page):
        assert 'fill="currentColor"' in svg and "var(--jp-content-font-color1" in svg and "--vscode-" in svg
    assert 'stroke="#555"' not in page and 'fill="#666"' not in page
    assert "padding: 2px 8px" in page  # classic Notebook gives table cells no padding of its own


def test_the_dag_follows_the_theme_and_has_no_empty_space_below(ip):
    for cell in ("%%step load\nx = 1", "%%step use\ny = x + 1", "%%step last\nz = y + 1"):
        run_ok(ip, cell)
    svg = plan_svg(kernel_state(ip).plan())
    assert 'stroke="#fff"' not in svg and "var(--jp-layout-color0" in svg  # label halo in the theme's background
    assert 'fill="#444"' not in svg and 'fill="#e3f2fd"' not in svg
    height = float(re.search(r'height="([\d.]+)"', svg).group(1))
    bottom = max(
        float(y) + float(h)
        for y, h in re.findall(r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"', svg)
    )
    assert 0 < height - bottom <= 30, (height, bottom)


def test_pipeline_and_progress_publish_text_plain(ip, capsys):
    for cell in ("%%step load\nx = 1", "%%step use\ny = x + 1"):
        run_ok(ip, cell)
    shown = ip.display_formatter.format(run_ok(ip, "%pipeline"))[0]
    assert "load -> use: x" in shown["text/plain"] and "<svg" in shown["text/html"]
    from nbmagic.run.result import progress_text

    run = run_ok(ip, "%compile_run --quiet")
    text = progress_text(run)
    assert text.splitlines()[0].startswith(f"run {run.id} ") and "  load: done (" in text and "  use: done (" in text


def test_the_form_says_what_to_install_and_what_to_type_where_widgets_cannot_show():
    form = TuneForm(RECORDED, ["loss"], lambda spec: None)
    text = form.widget._repr_mimebundle_()["text/plain"]
    assert "pip install widgetsnbextension" in text and "Jupyter server's environment" in text
    assert "%katib --algorithm tpe" in text and "--param 'lr=double(" in text
    assert "VBox(" not in text
    assert form.error.value == "" and form.command.value == ""  # asking for the line changed nothing on screen


def test_the_form_header_lines_up_with_its_inputs_and_a_disabled_stop_is_plain():
    form = TuneForm(RECORDED, ["loss"], lambda spec: None)
    header = form.widget.children[0]
    widths = [child.layout.width for child in header.children]
    row = form.row("lr").widget.children
    assert widths == [f"{px}px" for _, px in COLUMNS] == [c.layout.width for c in row[: len(COLUMNS)]]
    assert form.stop_button.disabled and form.stop_button.button_style == ""


def test_katib_without_arguments_in_a_terminal_prints_the_command_line(ip, capsys):
    for cell in ("%%pipeline_parameters\nlr = 0.01", "%%step fit\nloss = (lr - 0.03) ** 2", "%pipeline_metrics loss"):
        assert run_cell(ip, cell).success
    result = run_cell(ip, "exp = %katib")
    assert result.success and ip.user_ns["exp"] is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("%katib ") and "--param 'lr=double(" in printed[-1]
