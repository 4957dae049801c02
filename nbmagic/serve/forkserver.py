"""A warm process that has KServe, FastAPI, numpy and nbmagic's server imported, and forks model servers on demand.

    python -m nbmagic.serve.forkserver PARENT_PID

Requests arrive on stdin, one JSON line each: ``{"argv": [...], "log": PATH, "cwd": DIR, "env": {...},
"modules": [...]}`` (modules: the model's library modules, imported here first so later servers start warm); a
line with ``modules`` only is a hint sent while the kernel writes the package: they are imported meanwhile.
It answers on its stdout pipe (kept on its own fd: fd 1 goes to stderr) ``started PID``, then ``listening PID`` once that server listens (written by the server itself
on the same pipe), and later ``exit PID CODE``. It exits with its parent (the kernel) or when
stdin closes, and its servers exit with it (PR_SET_PDEATHSIG and a parent watchdog, as for any server).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

_PRELOAD = (
    "numpy",
    "orjson",
    "httpx",
    "dill",
    "joblib",
    "nbmagic.serve.kserve_lean",  # KServe's server modules only (see kserve_lean.load)
    "fastapi",
    "uvicorn",
    "nbmagic.serve.server",
    "nbmagic.serve.endpoint",
    "nbmagic.serve.routes",
    "nbmagic.serve.formats",
    "nbmagic.serve.transformer",
    "sklearn.base",
    # what a server imports while it starts (uvicorn's protocols, FastAPI's pydantic.v1 checks)
    "pydantic.v1",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "uvloop",
    "concurrent.futures.thread",
    "nbmagic.serve.package",
)
# a request's "modules" (the model's own module) are imported here before forking, so the next server of the
# same kind starts with them; only installed model libraries, never the user's files (they may change between
# two servers, and the fork would keep the old ones); not keras: its backend is chosen by the environment at import
_LIBRARIES = ("sklearn", "xgboost", "lightgbm", "torch")


_PROTOCOL = 1  # the fd the kernel reads; main() moves it off fd 1, where imported code may print


def _say(text: str) -> None:
    os.write(_PROTOCOL, (text + "\n").encode())  # no Python-level stream lock: safe around fork


def _own_stdout() -> None:
    """Keep the protocol on a dedicated fd and point fd 1 (what imported code prints to) at stderr."""
    global _PROTOCOL
    _PROTOCOL = os.dup(1)
    os.set_inheritable(_PROTOCOL, False)
    os.dup2(2, 1)


def preload() -> None:
    import importlib

    argv, sys.argv = sys.argv, sys.argv[:1]  # kserve.model_server parses sys.argv at import time
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
            if name == "nbmagic.serve.kserve_lean":
                sys.modules[name].load()
        except Exception:  # noqa: BLE001 - an optional library missing: the child imports what it needs
            pass
    try:
        from nbmagic.serve import server

        server.prebuild()  # KServe's routes on its app once, here: every forked server starts with them
    except Exception:  # noqa: BLE001 - each server then builds its own
        pass
    sys.argv = argv


def import_libraries(names: list[str]) -> None:
    """Import the model library modules in ``names`` (others are ignored; failures left to the child)."""
    import importlib

    for name in names:
        if name.split(".")[0] in _LIBRARIES and name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the child reports what it cannot import
                pass


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            threading.Event().wait(0.2)
            continue
        _say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become the model server the request describes."""
    code = 0
    try:
        notify = _PROTOCOL  # the kernel's pipe: the server says "listening PID" there
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own stdout
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[0] = request["cwd"]  # as `python -m` in that folder: not the folder the warm process started in
        sys.path[1:1] = extra
        from nbmagic.serve import server

        sys.argv = ["nbmagic.serve.server", *request["argv"]]

        def ready() -> None:
            try:
                os.write(notify, f"listening {os.getpid()}\n".encode())  # one short write: atomic on a pipe
                os.close(notify)
            except OSError:
                pass

        server.main(request["argv"], on_ready=ready)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report like an interpreter would, then exit non-zero
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    from nbmagic.serve.server import die_with_parent

    parent = int(sys.argv[1])
    # no PR_SET_PDEATHSIG: Linux sends it when the *thread* that started us exits, and a short-lived thread of
    # the kernel starts us; stdin's end (the kernel's pipe closes when it dies) and the watchdog end us instead
    die_with_parent(parent, pdeathsig=False)
    _own_stdout()
    preload()
    threading.Thread(target=_reap, name="reaper", daemon=True).start()
    _say("ready")
    children: list[int] = []
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        import_libraries(request.get("modules", []))
        if "argv" not in request:  # a hint: a server for a model of these modules is coming
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
        children.append(pid)
        _say(f"started {pid}")
    for pid in children:  # the kernel closed our stdin: stop what we started
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    main()
