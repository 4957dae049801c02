"""Early stopping on a cluster, end to end as far as this machine allows.

A step calls ``nbmagic.report()`` per epoch. The pipeline is compiled by nbmagic and run on kfp.local (the same
component code a KFP pod runs); each task's real output becomes its pod's log. The Katib Experiment's trial
command is then run for real, wrapped the way Katib's webhook wraps it for the StdOut collector
(``sh -c "... 1>FILE 2>&1"``), against the swagger-checking KFP server and the pod-log server. What the trial
wrote is read by a re-implementation of Katib's collector, medianstop and observation code
(``helpers.katib_collector``): the values per epoch, in order, then the final value as the latest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.fake_katib_api import job_errors, katib_errors, schema_errors
from helpers.katib_collector import (
    CollectorFailed,
    StopRule,
    early_stopped_at,
    medianstop_rule,
    observation,
    parse_text_logs,
    wrap_command,
)
from helpers.kfp_api_server import KfpApiServer, PodLogServer
from helpers.kfp_local import run_on_kfp_local
from helpers.plans import step
from nbmagic.pipeline.model import Parameter, PipelinePlan
from nbmagic.tune.katib import build_experiment
from nbmagic.tune.space import ExperimentSpec, parse_param

pytestmark = pytest.mark.slow

TRAIN = (
    "from nbmagic import report\n"
    "print('val_loss=123')\n"  # a look-alike line without a time stamp: never relayed, never a metric
    "val_loss = 1.0\n"
    "for epoch in range(4):\n"
    "    val_loss = val_loss * lr\n"
    "    report(val_loss=val_loss, step=epoch)\n"
)
GOOD, BAD = 0.05, 0.9  # lr: val_loss after epoch e is lr ** (e + 1)


def curve(lr: float) -> list[float]:
    """The values the step reports, computed as the step computes them."""
    values, val_loss = [], 1.0
    for _ in range(4):
        val_loss = val_loss * lr
        values.append(val_loss)
    return values


def plan() -> PipelinePlan:
    train = step(
        "train",
        TRAIN,
        params=("lr",),
        outputs=("val_loss",),
        metrics=("val_loss",),
        modules=("nbmagic",),
        notebook="curves.ipynb",
    )
    return PipelinePlan("curves", (train,), {"lr": Parameter("lr", 0.1, "float")}, ("val_loss",))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(pipeline YAML path, lr -> the train task's pod log) from real runs with GOOD and BAD."""
    path, runs = run_on_kfp_local(plan(), tmp_path_factory.mktemp("curves"), [{"lr": GOOD}, {"lr": BAD}])
    assert all("train" in run.logs for run in runs), runs[-1].console[-2000:]
    return path, {GOOD: runs[0].logs["train"], BAD: runs[1].logs["train"]}


def experiment() -> dict:
    spec = ExperimentSpec(
        parameters=(parse_param("lr=double(0.01,1)"),),
        objective="val_loss",
        goal="minimize",
        algorithm="random",
        max_trials=6,
        parallel_trials=2,
        early_stopping="medianstop",
        min_trials=1,
        start_step=2,
    ).check_against({"lr": Parameter("lr", 0.1, "float")}, ["val_loss"])
    return build_experiment(
        spec, name="curves-1", namespace="kubeflow", host="http://kfp.invalid", pipeline_name="curves"
    )


def _servers(log: str, states: list[str]):
    kfp = KfpApiServer(layout="argo", run_states=states).start()

    def pods():
        found = {}
        for run_id in list(kfp.runs):
            for pod in kfp.pods(run_id):
                # the step's pod prints the curve; the task writing nbmagic's runtime prints no metric lines
                text = log if pod["role"] == "executor" and pod["task"] == "train" else "driver: resolved inputs\n"
                found[pod["name"]] = PodLogServer.pod(text, labels=pod["labels"], annotations=pod["annotations"])
        return found

    return kfp, PodLogServer("kubeflow", pod_source=pods).start()


def _trial(exp: dict, package: Path, kfp_url: str, lr: float, metrics_file: Path) -> list[str]:
    """The Experiment's trial command with Katib's substitutions, wrapped as the StdOut collector wraps it."""
    container = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    command = [
        a.replace("${trialParameters.lr}", repr(lr)).replace("/nbmagic/pipeline.yaml", str(package))
        for a in container["command"]
    ]
    command[command.index("--host") + 1] = kfp_url
    return wrap_command([*command, "--poll", "0.05"], str(metrics_file), bool(exp["spec"].get("earlyStopping")))


def _env(pods_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KF_PIPELINES", "NBMAGIC_K8S", "KUBERNETES_"))}
    env.update(NBMAGIC_K8S_HOST=pods_url, KUBECONFIG="/nonexistent")
    return env


def _run_trial(compiled, tmp_path, lr: float) -> str:
    package, logs = compiled
    kfp, pods = _servers(logs[lr], ["PENDING"] + ["RUNNING"] * 6 + ["SUCCEEDED"])
    metrics_file = tmp_path / f"metrics-{lr}.log"
    try:
        done = subprocess.run(
            _trial(experiment(), package, kfp.url, lr, metrics_file), env=_env(pods.url), timeout=120, cwd=tmp_path
        )
        assert not kfp.rejected
    finally:
        kfp.stop()
        pods.stop()
    text = metrics_file.read_text()
    assert done.returncode == 0, text
    return text


def test_the_experiment_with_medianstop_is_valid_against_katibs_schema():
    exp = experiment()
    assert exp["spec"]["earlyStopping"] == {
        "algorithmName": "medianstop",
        "algorithmSettings": [{"name": "min_trials_required", "value": "1"}, {"name": "start_step", "value": "2"}],
    }
    assert exp["spec"]["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    assert schema_errors(exp) == [] and katib_errors(exp) == []
    assert job_errors(exp["spec"]["trialTemplate"]["trialSpec"]) == []


def test_katibs_collector_reads_every_reported_epoch_then_the_final_value(compiled, tmp_path):
    text = _run_trial(compiled, tmp_path, GOOD)
    logs = parse_text_logs(text, ["val_loss"])
    expected = curve(GOOD)
    # each epoch once, in order (the run was polled several times while running), then the final metric
    assert [float(log.value) for log in logs] == [*expected, expected[-1]], text
    assert "val_loss=0.00000625" in text and "e-" not in text  # plain digits: no filter misreads an exponent
    assert "123" not in [log.value for log in logs]  # the step's look-alike line was not relayed
    stamps = [log.timestamp for log in logs]
    assert "0001-01-01T00:00:00Z" not in stamps and stamps == sorted(stamps)
    # the final value carries the latest time stamp: it is the trial's result, not the last reported epoch
    seen = observation(logs, ["val_loss"])["val_loss"]
    assert float(seen["latest"]) == float(seen["min"]) == expected[-1] and float(seen["max"]) == GOOD
    assert logs[-1].timestamp > logs[-2].timestamp


def test_medianstop_stops_the_worse_trial_at_start_step_from_the_relayed_lines(compiled, tmp_path):
    good = _run_trial(compiled, tmp_path, GOOD)
    bad = _run_trial(compiled, tmp_path, BAD)
    rule = medianstop_rule([parse_text_logs(good, ["val_loss"])], "val_loss", "minimize", min_trials=1, start_step=2)
    assert rule == StopRule("val_loss", sum(curve(GOOD)[:2]) / 2, "greater", 2)
    stopped = early_stopped_at(bad, [rule], "val_loss", "minimize")  # raises where Katib's collector would crash
    assert stopped is not None
    assert bad.split("\n")[stopped - 1].endswith(f"epoch 1: val_loss={curve(BAD)[1]!r}")  # at the 2nd report
    assert early_stopped_at(good, [rule], "val_loss", "minimize") is None
    with pytest.raises(CollectorFailed):  # the check can fail: a value Katib cannot parse ends its collector
        early_stopped_at("val_loss=oops", [StopRule("val_loss", 1.0, "greater")], "val_loss", "minimize")


def test_sigterm_from_katib_terminates_the_kfp_run(compiled, tmp_path):
    package, logs = compiled
    kfp, pods = _servers(logs[BAD], ["PENDING"] + ["RUNNING"] * 10_000)
    metrics_file = tmp_path / "metrics.log"
    process = subprocess.Popen(_trial(experiment(), package, kfp.url, BAD, metrics_file), env=_env(pods.url))
    try:
        deadline = time.time() + 60
        while "epoch 1: val_loss=" not in (metrics_file.read_text() if metrics_file.exists() else ""):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) == 1, children  # the trial runs below the webhook's shell, as in the pod
        os.kill(int(children[0]), signal.SIGTERM)  # Katib ends the training process, not the shell
        assert process.wait(30) != 0
    finally:
        if process.poll() is None:
            process.kill()
        kfp.stop()
        pods.stop()
    assert process.returncode == 1  # the webhook's shell: no early-stopped mark, so the trial failed
    assert not list(tmp_path.glob("*.pid"))  # not marked completed
    terminated = kfp.calls("RunService_TerminateRun")
    assert len(terminated) == 1 and terminated[0].status == 200
    assert f"KFP run {next(iter(kfp.runs))} terminated" in metrics_file.read_text()
