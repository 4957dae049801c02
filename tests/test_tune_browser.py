"""%katib in a real front end: Notebook 7 in headless Chromium, the ipywidgets form, Run, the live view.

The notebook is written here with nbformat; the test clicks Run All, edits the form (a range, the algorithm,
the trial count), clicks Run and reads the live view in the page. The study the kernel stored is then read
back with Optuna to check that what was typed in the browser is what the kernel tuned.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from helpers.browser import dump_page, open_and_run_all, requires_chromium

NOTEBOOK = "tune.ipynb"
CELLS = [
    "%load_ext nbmagic",
    "%%pipeline_parameters\nlr = 0.1\ndepth = 3",
    "%%step load\ndata = list(range(50))",
    "%%step prep\nxs = [x / 50 for x in data]",
    "%%step fit\nscore = -sum((x * lr - 0.3) ** 2 for x in xs) - 0.01 * depth",
    "%pipeline_metrics score",
    "exp = %katib",
]
TRIALS = 8
CLIPPED_LABELS = """svgs => svgs.flatMap(svg => [...svg.querySelectorAll('text')]
    .filter(t => { const b = t.getBBox(); return b.x < 0 || b.x + b.width > svg.width.baseVal.value; })
    .map(t => t.textContent))"""


def write_notebook(path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))


def table(view) -> list[dict[str, str]]:
    """The live view's trials table as a list of {column: text}."""
    head = [th.inner_text().strip() for th in view.locator("table.nbmagic-trials thead th").all()]
    rows = []
    for tr in view.locator("table.nbmagic-trials tbody tr").all():
        rows.append(dict(zip(head, (td.inner_text().strip() for td in tr.locator("td").all()))))
    return rows


@pytest.mark.browser
@pytest.mark.timeout(180)
@requires_chromium
def test_katib_form_in_notebook7_runs_trials_and_shows_the_best(notebook_server, notebook_root, page, tmp_path):
    write_notebook(notebook_root / NOTEBOOK)
    try:
        open_and_run_all(page, notebook_server, f"notebooks/{NOTEBOOK}", NOTEBOOK, cell_timeout=30, kernel_timeout=45)

        form = page.locator(".nbmagic-katib-form")
        form.wait_for(timeout=30_000)

        def row(name: str):
            return form.locator(".widget-hbox").filter(has=page.locator(f".widget-checkbox span[title='{name}']"))

        # pre-filled from %%pipeline_parameters: lr=0.1 -> log range 0.01..1, depth=3 -> 1..6
        assert row("lr").locator("input[placeholder=min]").input_value() == "0.01"
        assert row("lr").locator("input[placeholder=max]").input_value() == "1"
        assert row("depth").locator("input[placeholder=max]").input_value() == "6"
        assert form.locator(".widget-dropdown", has_text="objective").locator("select").input_value() == "score"

        row("lr").locator("input[placeholder=min]").fill("0.05")
        row("lr").locator("input[placeholder=max]").fill("0.5")
        row("depth").locator("input[placeholder=max]").fill("4")
        form.locator(".widget-dropdown", has_text="algorithm").locator("select").select_option("random")
        trials = form.locator(".widget-text", has_text="max trials").locator("input")
        trials.fill(str(TRIALS))
        trials.press("Tab")  # an IntText sends its value on blur or Enter
        form.locator("button", has_text="Run").click()

        view = page.locator(".nbmagic-tune[data-status=succeeded]")  # an ordinary output under the form
        view.wait_for(timeout=90_000)
        summary = view.inner_text()
        best_text = view.locator(".nbmagic-best").inner_text()
        rows = table(view)
        clipped = view.locator("svg").evaluate_all(CLIPPED_LABELS)
        page.set_viewport_size({"width": 1400, "height": 2400})  # the notebook scrolls inside the page
        form.screenshot(path=str(tmp_path / "katib-form.png"))
    except Exception:
        dump_page(page, tmp_path, "failure")
        print(notebook_server.log_tail())
        raise

    assert clipped == [], f"plot labels cut at the edge: {clipped}"
    assert "(random, maximize score)" in summary
    assert f"{TRIALS}/{TRIALS} finished, 0 running, 0 failed" in summary
    assert len(rows) == TRIALS and all(r["status"] == "succeeded" for r in rows)
    for r in rows:  # the ranges typed into the browser reached the sampler
        assert 0.05 <= float(r["lr"]) <= 0.5 and 1 <= int(r["depth"]) <= 4
    # load and prep read no tuned parameter: cache hits after the first trial
    assert [r["cached steps"] for r in rows] == ["0"] + ["2"] * (TRIALS - 1)
    top = max(rows, key=lambda r: float(r["score"]))
    match = re.match(r"best: trial (\d+), score = ([^,]+), lr=([^,]+), depth=(\d+)$", best_text)
    assert match, best_text
    assert match.group(1) == top["trial"] and match.group(2) == top["score"]

    # what the kernel stored agrees with the page
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journals = list((tmp_path / "nbmagic-home" / "tune").glob("*.journal"))
    assert len(journals) == 1
    storage = JournalStorage(JournalFileBackend(str(journals[0])))
    (summary_,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary_.study_name, storage=storage)
    assert len(study.trials) == TRIALS and study.best_trial.number == int(match.group(1))
    lr, depth = study.best_trial.distributions["lr"], study.best_trial.distributions["depth"]
    assert (lr.low, lr.high, lr.log) == (0.05, 0.5, True) and (depth.low, depth.high) == (1, 4)
    assert f"{study.best_value:.4g}" == top["score"]
