"""JupyterLab in headless Chromium, light and dark: the form, Run, the live view in the theme's colours; then
save, reopen with a fresh kernel, and the tuning results are still there (an output, not a widget)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from helpers.browser import dump_page, open_and_run_all, requires_chromium, while_attached

NOTEBOOK = "tune.ipynb"
CELLS = [
    "%load_ext nbmagic",
    "%%pipeline_parameters\nlr = 0.1\ndepth = 3",
    "%%step load\ndata = list(range(50))",
    "%%step fit\nscore = -sum((x / 50 * lr - 0.3) ** 2 for x in data) - 0.01 * depth",
    "%pipeline_metrics score",
    "%pipeline",
    "exp = %katib",
]
TRIALS = 4
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
LUMINANCE = """el => { const c = getComputedStyle(el).fill || getComputedStyle(el).color;
    const m = c && c.match(/[\\d.]+/g); if (!m) return null;  // an element the live view just replaced
    const [r, g, b] = m.map(Number); return (0.299 * r + 0.587 * g + 0.114 * b) / 255; }"""
TEXT_LUMINANCE = LUMINANCE.replace("getComputedStyle(el).fill || ", "")


def write_notebook(path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))


def use_theme(server_state: Path, theme: str) -> None:
    settings = server_state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": THEMES[theme]}))


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(300)
@requires_chromium
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_jupyterlab_tuning_view_reads_in_the_theme_and_survives_save_and_reopen(
    theme, notebook_server, notebook_root, page, tmp_path
):
    write_notebook(notebook_root / NOTEBOOK)
    use_theme(notebook_server.state, theme)
    shots = Path(__file__).resolve().parent.parent / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        open_and_run_all(page, notebook_server, f"lab/tree/{NOTEBOOK}", NOTEBOOK, cell_timeout=60, kernel_timeout=60)
        form = page.locator(".nbmagic-katib-form")
        form.wait_for(timeout=60_000)
        trials = form.locator(".widget-text", has_text="max trials").locator("input")
        trials.fill(str(TRIALS))
        trials.press("Tab")
        form.locator("button", has_text="Run").click()
        view = page.locator(".nbmagic-tune[data-status=succeeded]")
        view.wait_for(timeout=120_000)
        for _ in range(20):  # the live view publishes its final state once more: read it once it holds still
            body_text = page.locator(".jp-Notebook").evaluate(TEXT_LUMINANCE)
            svg_texts = while_attached(
                page, lambda: view.locator("svg text").evaluate_all(f"els => els.map({LUMINANCE})")
            )
            dag_texts = page.locator(".jp-OutputArea-output svg text").evaluate_all(f"els => els.map({LUMINANCE})")
            best = view.locator("table.nbmagic-trials tbody tr[style]").first
            best_row = while_attached(page, lambda: best.evaluate(TEXT_LUMINANCE))  # noqa: B023
            if None not in (body_text, best_row, *svg_texts, *dag_texts):
                break
            page.wait_for_timeout(250)
        stop_style = form.locator("button", has_text="Stop").get_attribute("class")
        while_attached(page, view.scroll_into_view_if_needed)
        page.screenshot(path=str(shots / f"jupyterlab-{theme}.png"), full_page=False)

        page.keyboard.press("Control+s")  # save, then reopen with a fresh kernel
        saved = (notebook_root / NOTEBOOK).read_text()
        for _ in range(50):
            if 'data-status=\\"succeeded\\"' in saved:
                break
            page.wait_for_timeout(200)
            saved = (notebook_root / NOTEBOOK).read_text()
        for session in notebook_server.api("api/sessions"):
            notebook_server.api(f"api/sessions/{session['id']}", method="DELETE")
        page.reload()
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        reopened = page.locator(".nbmagic-tune[data-status=succeeded]")
        reopened.wait_for(timeout=30_000)
        reopened_rows = reopened.locator("table.nbmagic-trials tbody tr").count()
    except Exception:
        dump_page(page, tmp_path, "failure")
        print(notebook_server.log_tail())
        raise

    dark = theme == "dark"
    assert (body_text > 0.5) == dark, body_text  # the theme really is the one asked for
    for luminance in [*svg_texts, *dag_texts, best_row]:  # text follows the theme: light on dark, dark on light
        assert (luminance > 0.5) == dark, (svg_texts, dag_texts, best_row)
    assert dag_texts, "the %pipeline DAG was drawn"
    assert "mod-warning" not in (stop_style or ""), "a disabled Stop button is plain"
    assert 'data-status=\\"succeeded\\"' in saved, "the final view is in the saved notebook"
    assert reopened_rows == TRIALS
