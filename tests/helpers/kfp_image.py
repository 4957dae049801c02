"""kfp.local's DockerRunner with each task's container run as a process of this environment instead.

This environment has what nbmagic's cluster image has (nbmagic and kfp installed), so a pipeline compiled for that
image runs here as a cluster would run it: kfp.local builds each task's executor input, resolves the container's
command and arguments (``{{$}}``, paths), and collects the outputs from the executor output file, as for Docker.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_containers_here(monkeypatch) -> None:
    """Make ``kfp.local.DockerRunner`` run task containers as local processes (``python3`` = this interpreter)."""
    from kfp.local import docker_task_handler, status

    def run(self) -> status.Status:
        command = list(self.full_command)
        if command and command[0] in ("python3", "python"):
            command[0] = sys.executable
        done = subprocess.run(command, env=dict(os.environ, **self.env_vars))
        return status.Status.SUCCESS if done.returncode == 0 else status.Status.FAILURE

    monkeypatch.setattr(docker_task_handler.DockerTaskHandler, "run", run)
