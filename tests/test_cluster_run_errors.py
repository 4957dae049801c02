"""Cluster runs: polling errors keep the token out, and a run deleted while it is followed."""
# no `from __future__ import annotations`: kfp reads component annotations as real types

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cluster_run import TOKEN, _isolated, _one_line_error, compiled  # noqa: E402,F401

from helpers.kfp_api_server import KfpApiServer, _ApiError  # noqa: E402
from nbmagic.run import cluster  # noqa: E402


def test_polling_errors_never_echo_the_token(compiled):  # noqa: F811
    with KfpApiServer(token=TOKEN) as srv:
        srv.run_states = ["RUNNING", "RUNNING"]
        run = cluster.submit(compiled, host=srv.url, existing_token=TOKEN)

        def echoing_proxy(rec):  # an auth proxy that repeats what it got once the token expired
            raise _ApiError(401, 16, f"expired: {rec.headers.get('authorization')}")

        srv._check_auth = echoing_proxy
        with pytest.raises(cluster.ClusterError) as excinfo:
            run.wait(timeout=5, poll_interval=0.01)
    message = _one_line_error(excinfo)
    assert "401" in message and TOKEN not in message and "***" in message


def test_a_run_deleted_while_followed_is_one_line_naming_it(compiled):  # noqa: F811
    with KfpApiServer() as srv:
        srv.run_states = ["RUNNING", "RUNNING"]
        run = cluster.submit(compiled, host=srv.url)
        srv.runs.clear()
        with pytest.raises(cluster.ClusterError) as excinfo:
            run.wait(timeout=5, poll_interval=0.01)
    message = _one_line_error(excinfo)
    assert run.id in message and "404" in message
