"""A notebook's cells run in the test kernel, then ``%compile_run`` as recorded and with one parameter changed."""

from __future__ import annotations

from typing import Any

from helpers.shell import run_ok


def run_twice(ip: Any, cells: list[str], param: str) -> tuple[Any, Any]:
    """Run ``cells``, then ``%compile_run --quiet`` and ``%compile_run --quiet --param param`` (``NAME=VALUE``)."""
    for cell in cells:
        run_ok(ip, cell)
    return run_ok(ip, "%compile_run --quiet"), run_ok(ip, f"%compile_run --quiet --param {param}")
