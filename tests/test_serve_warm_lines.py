"""How the kernel follows the warm process's lines: servers started, listening and exited, a reused pid, and
lines that are not the protocol (driven with synthetic lines, no process)."""

from __future__ import annotations

import threading

from nbmagic.serve.warm import WarmProcess


class _Running:
    def poll(self):
        return None


def _follower() -> WarmProcess:
    warm = WarmProcess.__new__(WarmProcess)  # the reader's state only: no warm process is started
    warm.popen = _Running()
    warm._ready = threading.Event()
    warm._started = []
    warm._started_event = threading.Condition()
    warm._exits = {}
    warm._listening = set()
    return warm


def test_a_reused_pid_is_a_running_server_again():
    warm = _follower()
    for line in ("ready\n", "started 41\n", "listening 41\n", "exit 41 0\n"):
        warm._on_line(line)
    assert warm._ready.is_set() and warm.exit_code(41) == 0
    warm._on_line("started 41\n")  # the system gave pid 41 to the next server
    assert warm.exit_code(41) is None
    assert warm._started == [41, 41]
    warm._on_line("exit 41 -15\n")
    assert warm.exit_code(41) == -15


def test_lines_that_are_not_the_protocol_are_skipped():
    warm = _follower()
    for line in ("\n", "   \n", "started\n", "started soon\n", "exit 7\n", "hello world\n", "listening x\n"):
        warm._on_line(line)
    assert (warm._started, warm._exits, warm._listening, warm._ready.is_set()) == ([], {}, set(), False)
    warm._on_line("started 7\n")
    assert warm._started == [7]
