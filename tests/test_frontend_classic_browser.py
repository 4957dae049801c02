"""nbclassic (classic Notebook UI) in headless Chromium: the notebook file is found, the form renders and runs,
the trials table has padded cells, and the final view is saved with the notebook."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers.browser import NotebookServer, dump_page, requires_chromium, while_attached

pytest.importorskip("nbclassic")

NOTEBOOK = "tune.ipynb"
CELLS = [
    "%load_ext nbmagic",
    "%%pipeline_parameters\nlr = 0.1",
    "%%step fit\nscore = -(lr - 0.3) ** 2",
    "%pipeline_metrics score",
    "%pipeline",
    "exp = %katib",
]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(300)
@requires_chromium
def test_nbclassic_finds_the_notebook_and_runs_the_form(notebook_root, page, tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(notebook_root / NOTEBOOK))
    home = tmp_path / "nbmagic-home"
    home.mkdir()
    server = NotebookServer(notebook_root, env={"NBMAGIC_HOME": str(home)}, state=tmp_path / "jupyter", app="nbclassic")
    server.start(timeout=90)
    shots = Path(__file__).resolve().parent.parent / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    try:
        page.goto(server.url(f"nbclassic/notebooks/{NOTEBOOK}"))
        # Run All only once the widgets extension has its manager on the kernel (it loads asynchronously, and a
        # widget displayed before then is never rendered: the form would silently not appear)
        page.wait_for_function(
            "window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel && Jupyter.notebook.kernel.widget_manager",
            timeout=60_000,
        )
        # the new manager asks the kernel for its widgets' state on a comm; a kernel_info round trip on the same
        # channel returns after that answer, so cells run after it do not race the manager's reload (which can
        # leave a widget's view empty)
        page.evaluate("new Promise(done => Jupyter.notebook.kernel.kernel_info(done))")
        server.wait_kernel_idle(NOTEBOOK, timeout=60)
        page.evaluate("Jupyter.notebook.execute_all_cells()")
        form = page.locator(".nbmagic-katib-form")
        form.wait_for(timeout=60_000)
        trials = form.locator(".widget-text", has_text="max trials").locator("input")
        trials.fill("3")
        trials.press("Tab")
        form.locator("button", has_text="Run").click()
        view = page.locator(".nbmagic-tune[data-status=succeeded]")
        view.wait_for(timeout=120_000)
        plan_text = page.locator(".output_area pre", has_text="pipeline ").first.inner_text()
        # the live view publishes its final state once more: read it whenever it is replaced under us
        cell = view.locator("table.nbmagic-trials td").first
        padding = while_attached(page, lambda: cell.evaluate("td => getComputedStyle(td).paddingLeft"))
        while_attached(page, view.scroll_into_view_if_needed)
        page.screenshot(path=str(shots / "nbclassic.png"))
        page.evaluate("Jupyter.notebook.save_notebook()")
        saved = ""
        for _ in range(50):
            saved = (notebook_root / NOTEBOOK).read_text()
            if 'data-status=\\"succeeded\\"' in saved:
                break
            page.wait_for_timeout(200)
    except Exception:
        dump_page(page, tmp_path, "failure")
        print(page.locator(".cell").last.inner_text())
        print("browser console:", *console[-40:], sep="\n")
        print(server.log_tail())
        raise
    finally:
        server.stop()
    assert f"({notebook_root / NOTEBOOK})" in plan_text.splitlines()[0], plan_text  # steps follow the file
    assert float(padding.removesuffix("px")) >= 6, padding
    assert 'data-status=\\"succeeded\\"' in saved
