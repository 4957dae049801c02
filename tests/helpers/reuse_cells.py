"""A step cell run, its values forgotten as a kernel restart would, and run again: the set-up of reuse tests."""

from __future__ import annotations

from typing import Any

from helpers.shell import run_ok


def forget(ip: Any, *names: str, strict: bool = True) -> None:
    """Drop ``names`` from the kernel, as a restart would; ``strict``: each must be there (a KeyError if not)."""
    for name in names:
        if strict:
            ip.user_ns.pop(name)
        else:
            ip.user_ns.pop(name, None)


def run_again(ip: Any, capsys: Any, cell: str, *names: str, strict: bool = True) -> str:
    """Run ``cell``, forget ``names`` (see ``forget``), clear what was printed, run ``cell`` again: what it printed."""
    run_ok(ip, cell)
    forget(ip, *names, strict=strict)
    capsys.readouterr()
    run_ok(ip, cell)
    return capsys.readouterr().out


def restart_all(ip: Any, capsys: Any, cells: list[str]) -> tuple[str, str]:
    """Run ``cells`` with reuse on, drop what they bound (a restart), run them again: (first, second) output."""
    run_ok(ip, "%pipeline_config --reuse")
    base = set(ip.user_ns)
    for cell in cells:
        run_ok(ip, cell)
    first = capsys.readouterr().out
    for name in set(ip.user_ns) - base:
        ip.user_ns.pop(name)
    for cell in cells:
        run_ok(ip, cell)
    return first, capsys.readouterr().out
