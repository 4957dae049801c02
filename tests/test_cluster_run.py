"""Cluster runs: a real kfp-compiled pipeline submitted by the real kfp.Client to a swagger-checking server."""
# no `from __future__ import annotations`: kfp reads component annotations as real types

import http.server
import json
import logging
import socket
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from helpers.kfp_api_server import KfpApiServer  # noqa: E402
from helpers.kfp_env import isolate_from_cluster  # noqa: E402
from nbmagic.errors import NbMagicError  # noqa: E402
from nbmagic.run import cluster  # noqa: E402

TOKEN = "tok-9f8e7d6c5b4a-SECRET"
FLOW = [
    "HealthzService_GetHealthz",  # nbmagic's one-try probe (a refusal is one line at once) ...
    "HealthzService_GetHealthz",  # ... then kfp.Client's own check, which succeeds first time
    "ExperimentService_ListExperiments",
    "ExperimentService_CreateExperiment",
    "RunService_CreateRun",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No kfp context file or KFP/nbmagic/Kubernetes environment leaks in from the machine."""
    isolate_from_cluster(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A two-step pipeline with typed parameters and a Metrics output, compiled by kfp."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
    def prepare(n: int, scale: float) -> float:
        return n * scale

    @dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
    def train(x: float, label: str, shuffle: bool, metrics: dsl.Output[dsl.Metrics]):
        metrics.log_metric("score", x)

    @dsl.pipeline(name="two-steps")
    def two_steps(n: int = 3, scale: float = 0.5, label: str = "a", shuffle: bool = False):
        prepared = prepare(n=n, scale=scale)
        train(x=prepared.output, label=label, shuffle=shuffle)

    path = tmp_path_factory.mktemp("kfp") / "two_steps.yaml"
    compiler.Compiler().compile(two_steps, str(path))
    return path


@pytest.fixture
def server():
    with KfpApiServer() as srv:
        yield srv


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, NbMagicError)
    assert "\n" not in message and message
    return message


# --- the test server itself rejects what the swagger forbids ---------------------------------


def _raw(server, method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.url + path, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_rejects_requests_outside_the_swagger(server):
    status, body = _raw(server, "POST", "/apis/v2beta1/experiments", {"display_name": 7})
    assert status == 400 and "display_name" in body["message"]
    status, body = _raw(
        server,
        "POST",
        "/apis/v2beta1/runs",
        {"display_name": "r", "pipeline_spec": {}, "runtime_config": {"parameters": {}}, "bogus_field": 1},
    )
    assert status == 400 and "bogus_field" in body["message"]
    status, body = _raw(
        server, "POST", "/apis/v2beta1/runs", {"display_name": "r", "pipeline_spec": {"root": {"no_such_field": 1}}}
    )
    assert status == 400 and "PipelineSpec" in body["message"]
    status, body = _raw(server, "GET", "/apis/v2beta1/experiments?page_size=ten")
    assert status == 400 and "page_size" in body["message"]
    status, body = _raw(server, "GET", "/apis/v2beta1/experiments?colour=red")
    assert status == 400 and "colour" in body["message"]
    assert _raw(server, "GET", "/apis/v1beta1/runs")[0] == 404
    assert _raw(server, "PUT", "/apis/v2beta1/runs")[0] == 405
    assert len(server.rejected) == 7
    # camelCase names and enum numbers are valid protojson, as grpc-gateway accepts them
    status, _ = _raw(
        server,
        "GET",
        "/apis/v2beta1/experiments?filter="
        + urllib.request.quote(
            json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": "x"}]})
        ),
    )
    assert status == 200


def test_server_checks_the_bearer_token():
    with KfpApiServer(token=TOKEN) as srv:
        assert _raw(srv, "GET", "/apis/v2beta1/healthz")[0] == 401
        assert _raw(srv, "GET", "/apis/v2beta1/healthz", headers={"Authorization": "Bearer nope"})[0] == 401
        assert _raw(srv, "GET", "/apis/v2beta1/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


# --- submission ------------------------------------------------------------------------------


def test_submit_sends_the_compiled_spec_with_typed_parameters(server, compiled):
    run = cluster.submit(
        compiled,
        host=server.url,
        experiment="nbmagic-tests",
        run_name="first",
        parameters={"n": 7, "scale": 2.5, "label": "b", "shuffle": True},
    )
    assert not server.rejected, [r.error for r in server.rejected]
    assert [r.operation for r in server.requests] == FLOW
    created = server.calls("RunService_CreateRun")[0].body
    assert created["pipeline_spec"] == yaml.safe_load(compiled.read_text())
    params = created["runtime_config"]["parameters"]
    assert params == {"n": 7, "scale": 2.5, "label": "b", "shuffle": True}
    assert [type(params[k]) for k in ("n", "scale", "label", "shuffle")] == [int, float, str, bool]
    assert created["display_name"] == "first"
    experiment = server.calls("ExperimentService_CreateExperiment")[0].body
    assert experiment["display_name"] == "nbmagic-tests"
    assert created["experiment_id"] == run.experiment_id == next(iter(server.experiments))
    assert run.id in server.runs
    assert run.url == f"{server.url}/#/runs/details/{run.id}"
    assert run.status == "pending"


def test_yaml_text_is_accepted_and_run_name_defaults_to_pipeline_name(server, compiled):
    run = cluster.submit(compiled.read_text(), host=server.url)
    assert not server.rejected
    assert run.name.startswith("two-steps ")
    assert server.calls("ExperimentService_CreateExperiment")[0].body["display_name"] == "Default"


def test_experiment_is_created_once_then_reused(server, compiled):
    first = cluster.submit(compiled, host=server.url, experiment="exp-a")
    second = cluster.submit(compiled, host=server.url, experiment="exp-a")
    other = cluster.submit(compiled, host=server.url, experiment="exp-b")
    assert not server.rejected
    assert len(server.calls("ExperimentService_CreateExperiment")) == 2
    assert first.experiment_id == second.experiment_id != other.experiment_id
    assert {e["display_name"] for e in server.experiments.values()} == {"exp-a", "exp-b"}


def test_host_from_environment(server, compiled, monkeypatch):
    monkeypatch.setenv("NBMAGIC_KFP_HOST", server.url + "/")
    run = cluster.submit(compiled)
    assert run.url.startswith(server.url + "/#/runs/details/")
    assert [r.operation for r in server.requests] == FLOW


def test_platform_spec_travels_with_the_pipeline_spec(server, tmp_path):
    from kfp import compiler, dsl, kubernetes

    @dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
    def hello(who: str) -> str:
        return who

    @dsl.pipeline(name="with-platform")
    def pipe(who: str = "x"):
        kubernetes.add_node_selector(hello(who=who), label_key="pool", label_value="cpu")

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipe, str(path))
    cluster.submit(path, host=server.url, parameters={"who": "y"})
    assert not server.rejected
    spec = server.calls("RunService_CreateRun")[0].body["pipeline_spec"]
    docs = list(yaml.safe_load_all(path.read_text()))
    assert spec["pipeline_spec"] == docs[0] and "platforms" in spec["platform_spec"]


# --- following the run -----------------------------------------------------------------------


def test_wait_polls_until_done_with_task_status_and_metric_refs(server, compiled):
    run = cluster.submit(compiled, host=server.url)
    seen = []
    run.wait(
        timeout=30,
        poll_interval=0.01,
        on_update=lambda r: seen.append((r.status, {n: t.status for n, t in r.tasks.items()})),
    )
    assert seen == [
        ("running", {"prepare": "done", "train": "running"}),
        ("done", {"prepare": "done", "train": "done"}),
    ]
    assert len(server.calls("RunService_GetRun")) == 2
    assert run.status == "done" and run.state == "SUCCEEDED" and run.error is None
    assert run.tasks["train"].duration is not None
    ref = run.metrics["train.metrics"]
    assert ref.artifact_type == "system.Metrics" and ref.value is None  # no Kubernetes access: no values
    assert "no Kubernetes access" in run.metrics_error and "NBMAGIC_K8S_HOST" in run.metrics_error
    assert ref.artifact_ids and all(i.isdigit() for i in ref.artifact_ids)
    assert set(run.metrics) == {"train.metrics"}
    assert not server.rejected
    text, page = repr(run), run._repr_html_()
    for part in (run.id, "done", run.url):
        assert part in text and part in page
    assert f'href="{run.url}"' in page and "train" in page


def test_failed_run_is_reported(server, compiled):
    server.run_states = ["RUNNING", "FAILED"]
    server.failure_message = "train: ValueError: bad input"
    run = cluster.submit(compiled, host=server.url).wait(timeout=30, poll_interval=0.01)
    assert run.status == "failed" and run.state == "FAILED"
    assert run.error == "train: ValueError: bad input"
    assert run.tasks["train"].status == "failed" and run.tasks["prepare"].status == "done"
    assert run.metrics["train.metrics"].artifact_ids == ()
    assert "failed" in repr(run) and "bad input" in run._repr_html_()


def test_wait_times_out_with_one_line(server, compiled):
    server.run_states = ["RUNNING"]
    run = cluster.submit(compiled, host=server.url)
    with pytest.raises(cluster.ClusterRunTimeout) as excinfo:
        run.wait(timeout=0.2, poll_interval=0.05)
    message = _one_line_error(excinfo)
    assert run.id in message and "running" in message


# --- bad input -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_is_one_clear_line(compiled):
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled, host=host)
    message = _one_line_error(excinfo)
    assert message.startswith(f"cannot reach the KFP API at {host}") and "refused" in message.lower()


def test_malformed_or_missing_host(compiled):
    for bad in ("localhost:8888", "ftp://x", "http://", "http://h:notaport"):
        with pytest.raises(cluster.ClusterError) as excinfo:
            cluster.submit(compiled, host=bad)
        assert bad in _one_line_error(excinfo)
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled)
    assert "NBMAGIC_KFP_HOST" in _one_line_error(excinfo)


def test_http_server_that_is_not_kfp(compiled):
    class NotKfp(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotKfp)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(cluster.ClusterError) as excinfo:
            cluster.submit(compiled, host=f"http://127.0.0.1:{httpd.server_address[1]}")
        assert "no KFP v2beta1 API here" in _one_line_error(excinfo)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_parameters_are_checked_before_anything_is_sent(server, compiled):
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled, host=server.url, parameters={"epochs": 3})
    assert "--param epochs" in _one_line_error(excinfo) and "n, scale" in str(excinfo.value)
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled, host=server.url, parameters={"n": "7"})
    assert "--param n: expected int, got str" in _one_line_error(excinfo)
    with pytest.raises(cluster.ClusterError):
        cluster.submit(compiled, host=server.url, parameters={"n": True})
    assert server.requests == []


def test_not_a_pipeline(server, tmp_path):
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(str(tmp_path / "missing.yaml"), host=server.url)
    assert "missing.yaml" in _one_line_error(excinfo)
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit("a: [1,\n", host=server.url)
    assert "does not parse" in _one_line_error(excinfo)


def test_multi_user_needs_a_namespace(compiled):
    with KfpApiServer(multi_user=True) as srv:
        with pytest.raises(cluster.ClusterError) as excinfo:
            cluster.submit(compiled, host=srv.url)
        assert "--namespace" in _one_line_error(excinfo)
        run = cluster.submit(compiled, host=srv.url, namespace="team-a", experiment="e")
        assert not srv.rejected
        assert srv.calls("ExperimentService_ListExperiments")[-1].query["namespace"] == ["team-a"]
        assert srv.experiments[run.experiment_id]["namespace"] == "team-a"


def test_tls_with_a_private_ca_certificate(compiled, tmp_path):
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    with KfpApiServer(tls=(str(cert), str(key))) as srv:
        assert srv.url.startswith("https://")
        with pytest.raises(cluster.ClusterError) as excinfo:
            cluster.submit(compiled, host=srv.url)
        assert "CERTIFICATE_VERIFY_FAILED" in _one_line_error(excinfo)
        run = cluster.submit(compiled, host=srv.url, ssl_ca_cert=str(cert))
        assert run.wait(timeout=30, poll_interval=0.01).status == "done"
        import urllib3

        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
            run = cluster.submit(compiled, host=srv.url, verify_ssl=False)
        assert run.url.startswith("https://") and not srv.rejected


# --- the token -------------------------------------------------------------------------------


def test_token_only_in_the_authorization_header(compiled, caplog, capsys, monkeypatch):
    caplog.set_level(logging.DEBUG)
    compiled_before = compiled.read_text()
    monkeypatch.setenv("NBMAGIC_KFP_TOKEN", TOKEN)
    with KfpApiServer(token=TOKEN) as srv:
        run = cluster.submit(compiled, host=srv.url, parameters={"label": "x"})
        # kfp_server_api.Configuration() resets these loggers to WARNING; open them up for polling
        for name in ("urllib3", "kfp_server_api"):
            caplog.set_level(logging.DEBUG, logger=name)
        run.wait(timeout=30, poll_interval=0.01)
        assert not srv.rejected and run.status == "done"
        assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in srv.requests)
        for r in srv.requests:
            visible = {k: v for k, v in r.headers.items() if k != "authorization"}
            assert TOKEN not in json.dumps([r.path, r.query, visible, r.body])
    assert compiled.read_text() == compiled_before and TOKEN not in compiled_before
    captured = capsys.readouterr()
    assert {"urllib3.connectionpool", "kfp_server_api.rest"} <= {rec.name for rec in caplog.records}
    for text in (caplog.text, captured.out, captured.err, repr(run), run._repr_html_(), str(vars(run))):
        assert TOKEN not in text


def test_wrong_token_is_refused_without_echoing_it(compiled, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with KfpApiServer(token=TOKEN) as srv:
        with pytest.raises(cluster.ClusterError) as excinfo:
            cluster.submit(compiled, host=srv.url, existing_token="wrong-token-123")
    message = _one_line_error(excinfo)
    assert "401" in message and "NBMAGIC_KFP_TOKEN" in message
    captured = capsys.readouterr()
    for text in (message, caplog.text, captured.out, captured.err):
        assert "wrong-token-123" not in text and TOKEN not in text


def test_token_in_yaml_or_parameters_is_refused(server, compiled):
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled.read_text() + f"# {TOKEN}\n", host=server.url, existing_token=TOKEN)
    assert "pipeline YAML" in _one_line_error(excinfo) and TOKEN not in str(excinfo.value)
    with pytest.raises(cluster.ClusterError) as excinfo:
        cluster.submit(compiled, host=server.url, existing_token=TOKEN, parameters={"label": TOKEN})
    assert "--param label" in _one_line_error(excinfo) and TOKEN not in str(excinfo.value)
    assert server.requests == []
