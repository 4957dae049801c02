"""A real IPython kernel for fault tests: start one, run code in it (also in the background, to interrupt it)."""

from __future__ import annotations

import os
import threading
from typing import Any


def start_kernel() -> tuple[Any, Any]:
    """A new python3 kernel (the test's environment, so it sees this checkout and ``$NBMAGIC_HOME``)."""
    from jupyter_client.manager import start_new_kernel

    return start_new_kernel(kernel_name="python3", env=dict(os.environ))


def execute(client: Any, code: str, timeout: float = 120) -> tuple[str, str, str]:
    """Run ``code`` in the kernel and wait for it: (status, stdout, stderr + error tracebacks)."""
    out: list[str] = []
    err: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            (out if msg["content"]["name"] == "stdout" else err).append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            err.append("\n".join(msg["content"]["traceback"]))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    return reply["content"]["status"], "".join(out), "".join(err)


def execute_in_background(client: Any, code: str, timeout: float = 300) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``code`` and return at once; ``result["reply"]`` holds what :func:`execute` returns once it ends."""
    result: dict[str, Any] = {}

    def go() -> None:
        result["reply"] = execute(client, code, timeout)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result
