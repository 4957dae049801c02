"""The step worker: a warm parent process that forks one child per step.

The parent imports the libraries steps use once; each step then starts in ~5 ms as a forked child with its
own process group, so a timeout or memory limit stops that step (and whatever it spawned) alone.

A step's whole process tree is reachable (Linux): the step dies with the worker (``PR_SET_PDEATHSIG``); every
program it starts carries ``NBMAGIC_STEP=<token>`` in its environment, so children that left the group
(``start_new_session=True``, double-forked daemons) are found and killed with the step; and the worker is a
child subreaper, so orphans that cleared their environment are re-parented to it and killed when no step
runs. Being a subreaper also keeps every leftover below the worker, so they are looked for in the worker's
own subtree (``/proc/<pid>/task/<tid>/children``), not across all of ``/proc``. Elsewhere only the step's
process group is reached.

Protocol, one JSON object per line. Requests on stdin:
``{"op": "preload", "modules": [...]}``, ``{"op": "run", "task": ID, "spec": PATH, "timeout": S, "memory": BYTES}``,
``{"op": "kill", "task": ID}``. Events on stdout: ``{"event": "ready"}``, ``{"event": "preloaded", "modules": [...]}``,
``{"event": "exit", "task": ID, "code": N, "signal": N, "timed_out": bool}``.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import time
from typing import Any


class _ParentGone(Exception):
    """The process that reads the worker's events has ended (its pipe is closed)."""


def _send(out: Any, event: dict[str, Any]) -> None:
    try:
        out.write(json.dumps(event) + "\n")
        out.flush()
    except (BrokenPipeError, ValueError) as exc:  # ValueError: the stream was closed after a broken pipe
        raise _ParentGone() from exc


TOKEN_ENV = "NBMAGIC_STEP"
INTERRUPTED_EXIT = 130  # a step that raised KeyboardInterrupt
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    """Linux ``prctl``; True if it took effect (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_KILL_WALKS = 4  # walks of the subtree per ended step, at most (see _kill_tree)
_SUBREAPER = False  # set once the worker is a child subreaper: a step's leftovers then stay below it


def _child(spec_path: str, memory: int | None, env: dict[str, str], token: str = "") -> None:
    """In the forked child: detach, apply limits, run the step, exit without running the parent's cleanup."""
    code = 1
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the step never outlives its worker
        if token:
            os.environ[TOKEN_ENV] = token  # inherited by every program the step starts
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.environ.update(env)
        if memory:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        from .task import run_task

        code = run_task(spec_path, secrets=tuple(env.values()))  # the pipe carries only secrets
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT
    except BaseException:  # noqa: BLE001 - reported through the exit code and the log
        import traceback

        traceback.print_exc()
        code = 3
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(stdin: Any = None, stdout: Any = None) -> None:
    """Main loop: read requests, fork children, report their exits; ends when stdin closes."""
    stdin = stdin or sys.stdin
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w") if stdout is None else stdout
    # children must never write into the protocol stream
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are for the kernel
    global _SUBREAPER
    _SUBREAPER = _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans of steps come back to the worker, not to init
    _warm_runtime()
    tasks: dict[int, dict[str, Any]] = {}  # pid -> {"task", "deadline", "timed_out"}
    try:
        _loop(stdin, out, wake_r, tasks)
    except _ParentGone:  # whoever started us is gone: end every step's tree and leave quietly
        for pid, task in tasks.items():
            _kill_tree(pid, task["token"])
        _kill_orphans()
        try:
            out.close()
        except OSError:
            pass
        os._exit(0)


def _loop(stdin: Any, out: Any, wake_r: int, tasks: dict[int, dict[str, Any]]) -> None:
    buffer = b""
    _send(out, {"event": "ready", "pid": os.getpid()})
    fd = stdin.fileno()
    open_input = True
    while open_input or tasks:
        deadlines = [t["deadline"] for t in tasks.values() if t["deadline"]]
        wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, _, _ = select.select([fd, wake_r] if open_input else [wake_r], [], [], wait)
        if wake_r in readable:
            os.read(wake_r, 4096)
        now = time.monotonic()
        for pid, task in tasks.items():
            if task["deadline"] and now >= task["deadline"] and not task["timed_out"]:
                task["timed_out"] = True
                _kill_tree(pid, task["token"])
        while tasks:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            task = tasks.pop(pid, None)
            if task is None:
                if not tasks:
                    _kill_orphans()
                continue
            _kill_tree(pid, task["token"])  # whatever the step left running, in its group or not
            if not tasks:
                _kill_orphans()
            _send(
                out,
                {
                    "event": "exit",
                    "task": task["task"],
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "timed_out": task["timed_out"],
                },
            )
        if fd in readable and open_input:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_input = False
                for pid, task in tasks.items():
                    _kill_tree(pid, task["token"])
                _kill_orphans()
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    _handle(json.loads(line), tasks, out)


def _warm_runtime() -> None:
    """Import what every step uses (runtime, store, hashing) once, so forked steps start with it loaded."""
    for module in (
        "nbmagic.run.task",
        "nbmagic.run.reuse_links",
        "nbmagic.store.objects",
        "nbmagic.runtime.marshal",
        "xxhash",
        "dill",
    ):
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _kill_group(pid: int) -> bool:
    """SIGKILL the process group ``pid``; False when it had no process left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _children(pid: int) -> list[int] | None:
    """Direct children of ``pid`` (every thread's), from ``/proc/<pid>/task/<tid>/children``; None if the kernel
    does not list them (no ``CONFIG_PROC_CHILDREN``), [] if ``pid`` is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(child) for child in handle.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return found


def _subtree() -> list[tuple[int, int]] | None:
    """(pid, parent pid) of every process below this worker; None where that cannot be read.

    The worker is a child subreaper, so whatever a step started stays below it (an orphan is re-parented to
    the worker, not to init): walking down from the worker finds every leftover of a step without reading all
    of ``/proc``, which costs milliseconds per step on a busy machine.
    """
    if not _SUBREAPER:
        return None
    found: list[tuple[int, int]] = []
    parents = [os.getpid()]
    while parents:
        parent = parents.pop()
        children = _children(parent)
        if children is None:
            return None
        found.extend((child, parent) for child in children)
        parents.extend(children)
    return found


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _processes() -> list[tuple[int, int, bytes]]:
    """(pid, parent pid, environment) of the processes a step may have left: the worker's subtree where it can
    be read, else every process of this user (Linux ``/proc``; empty elsewhere)."""
    below = _subtree()
    if below is not None:
        return [(pid, ppid, _environ(pid)) for pid, ppid in below]
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(name), ppid, environ))
    return found


def _kill_tree(pid: int, token: str) -> None:
    """Kill the step's process group and every process that carries the step's token in its environment.

    A process below one that is ended belongs to the step too, whatever its environment says (a process in the
    middle of ``exec`` shows an empty one for a moment). A process killed while the subtree is walked hands
    its children to the worker after the worker's own child list may have been read; so once something was
    killed, its victims are let end and the subtree is walked again, until a walk finds nothing new (a few
    walks at most).
    """
    if not token:
        _kill_group(pid)
        return
    needle = f"{TOKEN_ENV}={token}".encode()
    me = os.getpid()
    killed: set[int] = set()
    for walk in range(_KILL_WALKS):
        below = [(other, ppid, environ) for other, ppid, environ in _processes() if other != me]
        doomed = {other for other, _ppid, environ in below if other not in killed and _carries(other, environ, needle)}
        if walk == 0 and _kill_group(pid):  # its members end too: wait for those the walk saw
            doomed.update(other for other, _ppid, _environ in below if other not in killed and _group(other) == pid)
        doomed.update(_descendants(below, doomed | killed) - killed)
        if not doomed:
            return
        for other in doomed:
            try:
                os.kill(other, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.update(doomed)
        _await_end(list(doomed))


def _carries(pid: int, environ: bytes, needle: bytes) -> bool:
    """Whether ``pid``'s environment holds the step's token; an empty one (read mid-``exec``) is read again."""
    if not environ:
        time.sleep(0.001)
        environ = _environ(pid)
    return needle in environ.split(b"\0")


def _descendants(below: list[tuple[int, int, bytes]], roots: set[int]) -> set[int]:
    """The processes of ``below`` that descend from one of ``roots``."""
    children: dict[int, list[int]] = {}
    for other, ppid, _environ in below:
        children.setdefault(ppid, []).append(other)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _group(pid: int) -> int | None:
    """The process group of ``pid``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _await_end(pids: list[int], limit: float = 0.2) -> None:
    """Wait (briefly) until each of ``pids`` has ended: its children have then been re-parented."""
    deadline = time.monotonic() + limit
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    state = handle.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in (b"Z", b"X", b"x"):
                break
            time.sleep(0.0005)


def _kill_orphans() -> None:
    """With no step running, kill the worker's re-parented orphans (step leftovers that shed their token)."""
    me = os.getpid()
    below = _subtree()
    orphans = [p for p, ppid in below if ppid == me] if below is not None else None
    if orphans is None:
        orphans = [p for p, ppid, _environ in _processes() if ppid == me]
    for other in orphans:
        try:
            os.kill(other, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _handle(request: dict[str, Any], tasks: dict[int, dict[str, Any]], out: Any) -> None:
    op = request.get("op")
    if op == "preload":
        loaded = []
        for module in request.get("modules", []):
            try:
                importlib.import_module(module)
                loaded.append(module)
            except BaseException:  # noqa: BLE001 - a step that imports it will report the error itself
                pass
        _send(out, {"event": "preloaded", "modules": loaded})
    elif op == "run":
        token = f"{os.getpid()}-{request['task']}-{time.monotonic_ns()}"
        pid = os.fork()
        if pid == 0:
            _child(request["spec"], request.get("memory"), request.get("env") or {}, token)
        timeout = request.get("timeout")
        tasks[pid] = {
            "token": token,
            "task": request["task"],
            "deadline": time.monotonic() + timeout if timeout else None,
            "timed_out": False,
        }
        _send(out, {"event": "started", "task": request["task"], "pid": pid})
    elif op == "kill":
        for pid, task in tasks.items():
            if task["task"] == request.get("task"):
                _kill_tree(pid, task["token"])


if __name__ == "__main__":
    serve()
