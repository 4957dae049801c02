"""Metric values of a KFP cluster run, read from pod logs with the real kubernetes client.

The logs served are what a compiled nbmagic component really printed: the tiny pipeline below is compiled with
nbmagic's compiler and run once on kfp.local's SubprocessRunner (the same component code a cluster pod runs); each
task's streamed output becomes its pod's log in :class:`PodLogServer`. The KFP side is the swagger-checking
:class:`KfpApiServer`, in its simple layout and in the Argo layout of KFP's real backend (v1 and v2 pod names).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers.kfp_api_server import KfpApiServer, PodLogServer  # noqa: E402
from helpers.kfp_env import isolate_from_cluster  # noqa: E402
from helpers.kfp_local import run_on_kfp_local  # noqa: E402
from helpers.plans import step  # noqa: E402
from nbmagic.errors import NbMagicError  # noqa: E402
from nbmagic.pipeline.model import Parameter, PipelinePlan  # noqa: E402
from nbmagic.run import cluster  # noqa: E402
from nbmagic.runtime.component import METRIC_LINE_PREFIX  # noqa: E402
from nbmagic.runtime.report import KATIB_LINE  # noqa: E402
from nbmagic.tune import trial as trial_runner  # noqa: E402

PARAMS = {"n": 3, "scale": 0.1}
# what the cells compute for PARAMS: data = [0.0, 0.1, 0.2]; exact floats, so a lossy round trip would show
EXPECTED = {"total": 0.1 * 0 + 0.1 * 1 + 0.1 * 2, "mean_value": (0.1 * 1 + 0.1 * 2) / 3, "count": 3}
KFP_TOKEN = "kfp-tok-1a2b3c4d5e6f-SECRET"
K8S_TOKEN = "k8s-tok-9z8y7x6w5v-SECRET"


def tiny_plan() -> PipelinePlan:
    steps = (
        step(
            "make_data",
            "data = [i * scale for i in range(n)]\n",
            params=("n", "scale"),
            outputs=("data",),
            notebook="tiny.ipynb",
        ),
        step(
            "score_it",
            "total = sum(data)\nmean_value = total / len(data)\ncount = len(data)\n"
            "print('hello from the cell')\n"
            # a cell printing a look-alike line: nbmagic's own lines come after it and win
            f'print(\'{METRIC_LINE_PREFIX}\' + \'{{"step": "score_it", "name": "total", "value": -1}}\')\n',
            inputs={"data": "make_data"},
            outputs=("total", "mean_value", "count"),
            metrics=("total", "mean_value", "count"),
            index=2,
            notebook="tiny.ipynb",
        ),
    )
    parameters = {"n": Parameter("n", 4, "int"), "scale": Parameter("scale", 0.5, "float")}
    return PipelinePlan("tiny", steps, parameters, ("total", "mean_value", "count"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(pipeline YAML path, task -> pod log, the Metrics artifact kfp.local recorded) from one real run."""
    path, (run,) = run_on_kfp_local(tiny_plan(), tmp_path_factory.mktemp("metrics"), [PARAMS], "score_it_metrics")
    # and the task that writes nbmagic's runtime for the python:3.x steps, once per run
    assert set(run.logs) == {"nbmagic-runtime-package", "make-data", "score-it"}, run.console[-2000:]
    logs, artifact = run.logs, run.metrics
    return path, logs, artifact


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No kfp context file or KFP/nbmagic/Kubernetes environment leaks in from the machine."""
    isolate_from_cluster(monkeypatch, tmp_path)


def _pods_of(kfp_server: KfpApiServer, logs: dict[str, str]):
    """A PodLogServer pod source: every run's pods, executors logging what the real component printed."""

    def source():
        pods = {}
        for run_id in list(kfp_server.runs):
            for pod in kfp_server.pods(run_id):
                log = logs[pod["task"]] if pod["role"] == "executor" else "driver: resolved inputs\n"
                pods[pod["name"]] = PodLogServer.pod(log, labels=pod["labels"], annotations=pod["annotations"])
        return pods

    return source


def _servers(logs, **kfp_options):
    kfp_server = KfpApiServer(**kfp_options).start()
    pods = PodLogServer("kubeflow", pod_source=_pods_of(kfp_server, logs)).start()
    return kfp_server, pods


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, NbMagicError) and message and "\n" not in message
    return message


# --- the lines themselves --------------------------------------------------------------------


def test_the_component_prints_one_json_line_per_metric(compiled):
    _, logs, artifact = compiled
    lines = [line for line in logs["score-it"].splitlines() if line.startswith(METRIC_LINE_PREFIX)]
    assert [json.loads(line[len(METRIC_LINE_PREFIX) :]) for line in lines[-3:]] == [
        {"step": "score_it", "name": name, "value": EXPECTED[name]} for name in ("total", "mean_value", "count")
    ]
    assert "hello from the cell" in logs["score-it"]
    assert METRIC_LINE_PREFIX not in logs["make-data"]
    assert artifact == pytest.approx(EXPECTED)  # kfp's own Metrics artifact agrees


def test_parse_metric_lines_is_strict_and_keeps_order():
    text = "\n".join(
        [
            '2024-05-01T10:00:00.000000000Z nbmagic-metric {"step": "a", "name": "x", "value": 1.5}',
            'nbmagic-metric {"step": "a", "name": "y", "value": "7"}',  # not a number
            'nbmagic-metric {"step": "a", "name": "z", "value": true}',  # bool is not a metric
            "nbmagic-metric {broken json",
            'xnbmagic-metric {"step": "a", "name": "w", "value": 2}',  # glued to other text
            '    nbmagic-metric {"step": "b", "name": "x", "value": NaN}',
            'nbmagic-metric {"step": "a", "name": "x", "value": 2}',
        ]
    )
    found = cluster.parse_metric_lines(text)
    assert [(s, n) for s, n, _ in found] == [("a", "x"), ("b", "x"), ("a", "x")]
    assert found[0][2] == 1.5 and found[2][2] == 2 and found[1][2] != found[1][2]  # NaN


# --- submit -> wait -> metric values ---------------------------------------------------------


@pytest.mark.parametrize("layout,names", [("simple", "v1"), ("argo", "v1"), ("argo", "v2")])
def test_metric_values_come_from_the_pod_log(compiled, layout, names):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout=layout, pod_name_format=names)
    try:
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS, k8s_host=pods.url)
        assert run.metrics["score-it.metrics"].value is None  # not finished: nothing read
        assert pods.requests == []
        run.wait(timeout=30, poll_interval=0.01)
        assert run.status == "done" and set(run.tasks) == {"nbmagic-runtime-package", "make-data", "score-it"}
        values = run.metric_values()
        assert values == EXPECTED and type(values["count"]) is int
        ref = run.metrics["score-it.metrics"]
        assert ref.value == EXPECTED and "mean_value=" in repr(ref) and run.metrics_error is None
        assert "mean_value=" in run._repr_html_()
        reads = pods.log_reads()
        assert {r.query.get("container", [None])[0] for r in reads} == {"main"}
        assert all(r.path.startswith("/api/v1/namespaces/kubeflow/pods/") for r in reads)
        executor = next(
            p["name"] for p in kfp_server.pods(run.id) if p["task"] == "score-it" and p["role"] == "executor"
        )
        assert reads[-1].path.endswith(f"/pods/{executor}/log")
        if names == "v2":  # node ids are not pod names: found through KFP's run label
            assert [r.query["labelSelector"] for r in pods.lists()] == [[f"pipeline/runid={run.id}"]]
        else:
            assert pods.lists() == []
        count = len(pods.requests)
        assert run.metric_values() == EXPECTED and len(pods.requests) == count  # read once, kept
        assert "hello from the cell" in run.logs("score_it")
        assert not kfp_server.rejected
    finally:
        kfp_server.stop()
        pods.stop()


def test_run_metrics_fill_in_after_wait_with_settings_from_the_environment(compiled, monkeypatch):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout="argo")
    pods.namespace = "team-a"
    monkeypatch.setenv("NBMAGIC_K8S_HOST", pods.url)
    try:
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS, namespace="team-a", experiment="e")
        run.wait(timeout=30, poll_interval=0.01)
        assert run.k8s_namespace == "team-a"  # multi-user KFP: the pods run in the profile namespace
        assert f"mean_value={EXPECTED['mean_value']!r}" in run._repr_html_()  # the notebook shows the values
        assert run.metrics["score-it.metrics"].value == EXPECTED  # what %compile_run --host's run holds
        monkeypatch.setenv("NBMAGIC_K8S_NAMESPACE", "elsewhere")
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values(refresh=True)
        message = _one_line(excinfo)
        assert "no pod of step 'score-it' in namespace elsewhere" in message and "NBMAGIC_K8S_NAMESPACE" in message
    finally:
        kfp_server.stop()
        pods.stop()


# --- the Katib trial runner ------------------------------------------------------------------


def _trial_argv(path, kfp_url):
    return [
        "--host",
        kfp_url,
        "--pipeline-package",
        str(path),
        "--type",
        "n=int",
        "--param",
        "n=3",
        "--type",
        "scale=float",
        "--param",
        "scale=0.1",
        "--metric",
        "mean_value",
        "--metric",
        "total",
    ]


def test_trial_runner_prints_the_values_for_katibs_stdout_collector(compiled, capsys, monkeypatch):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout="argo", run_states=["SUCCEEDED"])
    monkeypatch.setenv("NBMAGIC_K8S_HOST", pods.url)
    try:
        assert trial_runner.main(_trial_argv(path, kfp_server.url)) == 0
        out = capsys.readouterr().out.splitlines()
        assert all(KATIB_LINE.match(line) for line in out), out  # time-stamped name=value lines
        shown = [line.split(" ", 1)[1] for line in out]
        assert shown == [f"mean_value={EXPECTED['mean_value']!r}", f"total={EXPECTED['total']!r}", "count=3"]
        created = kfp_server.calls("RunService_CreateRun")[0].body
        assert created["runtime_config"]["parameters"] == PARAMS
    finally:
        kfp_server.stop()
        pods.stop()


def test_trial_fails_with_one_clear_line_when_logs_are_unreadable(compiled, capsys, monkeypatch):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout="argo", run_states=["SUCCEEDED"])
    pods.forbid_logs = True
    monkeypatch.setenv("NBMAGIC_K8S_HOST", pods.url)
    try:
        assert trial_runner.main(_trial_argv(path, kfp_server.url)) == 1
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing Katib could take for a metric
        first = captured.err.splitlines()[-2]
        assert "HTTP 403" in first and "get pods/log in namespace kubeflow" in first
    finally:
        kfp_server.stop()
        pods.stop()


# --- logs that cannot be read ----------------------------------------------------------------


def test_unreadable_logs_are_one_line_errors(compiled):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout="argo", pod_name_format="v2")
    try:
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS, k8s_host=pods.url)
        run.wait(timeout=30, poll_interval=0.01)
        pods.forbid_list = True  # v2 pod names need the pod list: RBAC refuses it
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values()
        assert "HTTP 403" in _one_line(excinfo) and "list pods in namespace kubeflow" in str(excinfo.value)
        assert run.metrics["score-it.metrics"].value is None and run.metrics_error == str(excinfo.value)
        assert "metrics unavailable" in run._repr_html_()

        pods.forbid_list = False
        pods.pod_source = lambda: {}  # the pods were deleted (e.g. by Argo's pod GC)
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values()
        assert "no pod of step 'score-it' in namespace kubeflow" in _one_line(excinfo)

        # a pod that printed no metric lines: a KFP cache hit runs no code
        pods.pod_source = _pods_of(kfp_server, {**logs, "score-it": "cached\n"})
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values()
        assert "no metric lines" in _one_line(excinfo) and "cache" in str(excinfo.value)

        dead = f"http://127.0.0.1:{_free_port()}"  # no Kubernetes API there
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS, k8s_host=dead)
        run.wait(timeout=30, poll_interval=0.01)
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values()
        message = _one_line(excinfo)
        assert f"cannot reach the Kubernetes API at {dead}" in message and "refused" in message.lower()
    finally:
        kfp_server.stop()
        pods.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_kubernetes_configuration_is_one_line(compiled):
    path, logs, _ = compiled
    kfp_server, pods = _servers(logs)
    try:
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS).wait(timeout=30, poll_interval=0.01)
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values()
        assert "no Kubernetes access" in _one_line(excinfo)
        with pytest.raises(cluster.ClusterError):
            cluster.submit(path, host=kfp_server.url, k8s_host="localhost:6443")
    finally:
        kfp_server.stop()
        pods.stop()


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_stay_in_headers(compiled, tmp_path, monkeypatch, caplog, capsys):
    """KFP token to the KFP API, kubeconfig token to the Kubernetes API; neither in messages, logs or reprs."""
    path, logs, _ = compiled
    caplog.set_level(logging.DEBUG)
    kfp_server = KfpApiServer(token=KFP_TOKEN, layout="argo").start()
    pods = PodLogServer("ml", token=K8S_TOKEN, pod_source=_pods_of(kfp_server, logs)).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": pods.url}}],
                "users": [{"name": "u", "user": {"token": K8S_TOKEN}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "ml"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("NBMAGIC_KFP_TOKEN", KFP_TOKEN)
    try:
        run = cluster.submit(path, host=kfp_server.url, parameters=PARAMS)
        for name in ("urllib3", "kfp_server_api", "kubernetes"):
            caplog.set_level(logging.DEBUG, logger=name)
        run.wait(timeout=30, poll_interval=0.01)
        assert run.k8s_namespace == "ml"  # from the kubeconfig context
        assert run.metric_values() == EXPECTED
        assert {r.headers.get("authorization") for r in pods.requests} == {f"Bearer {K8S_TOKEN}"}
        assert {r.headers.get("authorization") for r in kfp_server.requests} == {f"Bearer {KFP_TOKEN}"}
        pods.forbid_logs = True  # the 403 message names the user (here: the token itself)
        with pytest.raises(cluster.ClusterLogsError) as excinfo:
            run.metric_values(refresh=True)
        assert "HTTP 403" in _one_line(excinfo) and "***" in str(excinfo.value)
        texts = [
            str(excinfo.value),
            run.metrics_error,
            repr(run),
            run._repr_html_(),
            str(vars(run)),
            repr(run.metrics),
            caplog.text,
            *capsys.readouterr(),
        ]
        for text in texts:
            assert KFP_TOKEN not in text and K8S_TOKEN not in text
    finally:
        kfp_server.stop()
        pods.stop()


# --- %compile_run --host -----------------------------------------------------------------------


def test_compile_run_host_returns_a_run_whose_metrics_fill_in_after_wait(ip, compiled, monkeypatch):
    """The magic's run (same steps as the fixture's pipeline, so the pods' logs are that real run's)."""
    from helpers.shell import run_cell

    _, logs, _ = compiled
    kfp_server, pods = _servers(logs, layout="argo")
    monkeypatch.setenv("NBMAGIC_K8S_HOST", pods.url)
    try:
        for cell in (
            "%%pipeline_parameters\nn = 3\nscale = 0.1\n",
            "%%step make_data\ndata = [i * scale for i in range(n)]\n",
            "%%step score_it\ntotal = sum(data)\nmean_value = total / len(data)\ncount = len(data)\n",
            "%pipeline_metrics total mean_value count\n",
            f"run = %compile_run --host {kfp_server.url}\n",
        ):
            result = run_cell(ip, cell)
            assert result.success, result.error_in_exec or result.error_before_exec
        run = ip.user_ns["run"]
        assert isinstance(run, cluster.ClusterRun)
        run.wait(timeout=30, poll_interval=0.01)
        assert run.metrics["score-it.metrics"].value == EXPECTED and run.metric_values() == EXPECTED
        assert not kfp_server.rejected
    finally:
        kfp_server.stop()
        pods.stop()
