"""Review findings: recording cells in a front end that sends no cell ids (terminal IPython, some editors)."""

from __future__ import annotations

from helpers.shell import run_cell
from nbmagic.magics.state import kernel_state


def test_two_parameter_cells_without_cell_ids_are_both_kept(ip):
    assert run_cell(ip, "%%pipeline_parameters\nlr = 0.1\n").success
    assert run_cell(ip, "%%pipeline_parameters\nepochs = 3\n").success
    assert run_cell(ip, "%%step train\nloss = lr * epochs\n").success
    plan = kernel_state(ip).plan()
    assert set(plan.parameters) == {"lr", "epochs"}
    assert plan.step("train").parameters == ("lr", "epochs")


def test_rerunning_an_edited_parameter_cell_without_cell_ids_replaces_it(ip):
    assert run_cell(ip, "%%pipeline_parameters\nlr = 0.1\n").success
    assert run_cell(ip, "%%pipeline_parameters\nlr = 0.5\n").success
    assert run_cell(ip, "%%step train\nloss = lr * 2\n").success
    plan = kernel_state(ip).plan()
    assert plan.parameters["lr"].default == 0.5
    assert len(plan.steps) == 1
