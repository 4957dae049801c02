"""A real IPython kernel for fault tests: start one, run code in it (also in the background, to interrupt it)."""

from __future__ import annotations

import os
import threading
from typing import Any


def start_kernel() -> tuple[Any, Any]:
    """A new python3 kernel (the test's environment, so it sees this checkout and ``$NBMAGIC_HOME``)."""
    from jupyter_client.manager import start_new_kernel

    return start_new_kernel(kernel_name="python3", env=dict(os.environ))


def _outputs(client: Any, code: str, timeout: float) -> tuple[str, list[tuple[str, str]]]:
    """Run ``code`` and wait for it: its status and, in order, (stream name or "error", text) of what it showed."""
    shown: list[tuple[str, str]] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            shown.append((msg["content"]["name"], msg["content"]["text"]))
        elif msg["msg_type"] == "error":
            shown.append(("error", "\n".join(msg["content"]["traceback"])))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"]["status"], shown


def execute(client: Any, code: str, timeout: float = 120) -> tuple[str, str, str]:
    """Run ``code`` in the kernel and wait for it: (status, stdout, stderr + error tracebacks)."""
    status, shown = _outputs(client, code, timeout)
    out = "".join(text for name, text in shown if name == "stdout")
    return status, out, "".join(text for name, text in shown if name != "stdout")


def execute_ok(client: Any, code: str, timeout: float = 120) -> str:
    """Run ``code`` in the kernel, failing the test unless it succeeds: all it printed, in order."""
    status, shown = _outputs(client, code, timeout)
    text = "".join(text for _, text in shown)
    assert status == "ok", text
    return text


def execute_in_background(client: Any, code: str, timeout: float = 300) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``code`` and return at once; ``result["reply"]`` holds what :func:`execute` returns once it ends."""
    result: dict[str, Any] = {}

    def go() -> None:
        result["reply"] = execute(client, code, timeout)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result
