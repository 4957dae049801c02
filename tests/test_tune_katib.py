"""Katib Experiments: generated manifests against the v1beta1 schema, submission to a fake Kubernetes API,
and the trial runner's typed parameters and StdOut lines."""

from __future__ import annotations

import json
import shlex

import pytest

from helpers.fake_katib_api import FakeKatib, FakeKubernetesAPI, job_errors, katib_errors, schema_errors
from helpers.katib_runs import start_katib
from nbmagic.pipeline.model import Parameter
from nbmagic.runtime.report import KATIB_LINE
from nbmagic.tune import trial as trial_runner
from nbmagic.tune.katib import build_experiment
from nbmagic.tune.space import ExperimentSpec, parse_param

RECORDED = {
    "lr": Parameter("lr", 0.01, "float"),
    "epochs": Parameter("epochs", 10, "int"),
    "kind": Parameter("kind", "mlp", "str"),
    "units": Parameter("units", 64, "int"),
    "shuffle": Parameter("shuffle", True, "bool"),
}
TEAM_A = {"host": "http://kfp:8888", "pipeline_name": "quickstart", "namespace": "team-a"}


def spec(*params, **kw):
    params = params or (
        "lr=double(1e-4,1e-1,log)",
        "epochs=int(5,50)",
        "kind=categorical(mlp,gbm)",
        "units=discrete(32,64,128)",
    )
    kw.setdefault("objective", "val_loss")
    return ExperimentSpec(parameters=tuple(parse_param(p) for p in params), **kw).check_against(
        RECORDED, ["val_loss", "acc"]
    )


def manifest(s=None, **kw):
    return build_experiment(
        s or spec(additional_metrics=("acc",), seed=7, fixed={"shuffle": "false"}),
        name="quickstart-1",
        namespace="team-a",
        host="http://ml-pipeline.kubeflow:8888",
        pipeline_name="quickstart",
        recorded=RECORDED,
        **kw,
    )


@pytest.mark.parametrize("algorithm", ["random", "tpe", "multivariate-tpe", "cmaes", "sobol", "bayesianoptimization"])
def test_generated_experiment_is_valid_against_the_katib_schema(algorithm):
    exp = manifest(spec(algorithm=algorithm, seed=1))
    assert schema_errors(exp) == [] and katib_errors(exp) == []


def trial_argv(container: dict) -> list[str]:
    """The trial runner's argv: the command itself, or after the installs in ``sh -c "pip install … && …"``."""
    command = container["command"]
    return shlex.split(command[2].split(" && ", 1)[1]) if command[:2] == ["sh", "-c"] else list(command)


def test_experiment_fields():
    exp = manifest()
    s = exp["spec"]
    assert s["algorithm"] == {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": "7"}]}
    assert s["objective"] == {
        "type": "minimize",
        "objectiveMetricName": "val_loss",
        "additionalMetricNames": ["acc"],
        "metricStrategies": [{"name": "val_loss", "value": "latest"}, {"name": "acc", "value": "latest"}],
    }
    assert s["parameters"] == [
        {
            "name": "lr",
            "parameterType": "double",
            "feasibleSpace": {"min": "0.0001", "max": "0.1", "distribution": "logUniform"},
        },
        {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "5", "max": "50"}},
        {"name": "kind", "parameterType": "categorical", "feasibleSpace": {"list": ["mlp", "gbm"]}},
        {"name": "units", "parameterType": "discrete", "feasibleSpace": {"list": ["32", "64", "128"]}},
    ]
    assert (s["maxTrialCount"], s["parallelTrialCount"], s["maxFailedTrialCount"]) == (12, 1, 3)
    assert s["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    template = s["trialTemplate"]
    assert [p["reference"] for p in template["trialParameters"]] == ["lr", "epochs", "kind", "units"]
    job = template["trialSpec"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    argv = trial_argv(container)
    assert argv[:3] == ["python", "-m", "nbmagic.tune.trial"]
    assert "lr=${trialParameters.lr}" in argv and "epochs=int" in argv and "shuffle=False" in argv
    assert "token" not in json.dumps(exp).lower()


def test_grid_without_a_step_and_bad_specs_fail_the_strict_schema_or_katib_checks():
    exp = manifest(spec("lr=double(0.01,0.1,step=0.01)", "units=discrete(32,64)", algorithm="grid"))
    assert katib_errors(exp) == [] and schema_errors(exp) == []
    broken = json.loads(json.dumps(exp))
    broken["spec"]["parameters"][0]["feasibleSpace"] = {"distribution": "gaussian", "min": "1", "max": "0"}
    broken["spec"]["objective"]["goalType"] = "minimize"  # not a field
    broken["spec"]["trialTemplate"]["trialParameters"][0]["reference"] = "learning_rate"
    assert any("goalType" in e for e in schema_errors(broken))
    problems = " | ".join(katib_errors(broken))
    assert "lr: min > max" in problems and "unknown distribution" in problems and "learning_rate" in problems


def test_submission_and_watching_through_the_kubernetes_api():
    with FakeKubernetesAPI() as api:
        exp = start_katib(api, spec(max_trials=4, parallel_trials=2), RECORDED, **TEAM_A)
        exp.wait(20)
        assert exp.done and exp.status == "succeeded", exp.message
        assert ("POST", "/api/v1/namespaces/team-a/configmaps") in api.state.requests
        assert ("POST", "/apis/kubeflow.org/v1beta1/namespaces/team-a/experiments") in api.state.requests
        stored = api.state.configmaps[("team-a", f"{exp.name}-pipeline")]
        assert stored["data"]["pipeline.yaml"] == "pipelineSpec: {}\n"
        trials = exp.trials
        assert len(trials) == 4 and all(t.status == "succeeded" for t in trials)
        best = exp.best
        optimal = exp.raw_status["currentOptimalTrial"]
        assert best.objective == min(t.objective for t in trials)
        assert trials[best.trial].name == optimal["bestTrialName"]
        # the same experiment again (the API server answers 409) is watched again, as a local one resumes
        again = start_katib(
            api, spec(max_trials=4, parallel_trials=2), RECORDED, "x", pipeline_name="quickstart", namespace="team-a"
        ).wait(20)
        assert again.resumed and again.name == exp.name and again.status == "succeeded"
        assert len(again.trials) == 4


def test_failing_trials_and_stop():
    failing = FakeKatib(metrics=lambda assignments, objective, index: None)
    with FakeKubernetesAPI(failing) as api:
        exp = start_katib(api, spec(max_trials=10, max_failed_trials=2), RECORDED, "y").wait(20)
        assert exp.status == "failed" and "max failed" in exp.message
        assert [t.status for t in exp.trials] == ["failed", "failed"] and exp.trials[0].error == "Job has failed"
    with FakeKubernetesAPI() as api:
        exp = start_katib(api, spec(max_trials=50, parallel_trials=2), RECORDED, "z", poll=0.05)
        while not exp.trials:
            exp.wait(0.05)
        exp.stop()
        exp.wait(20)
        assert exp.status == "stopped" and 1 <= len(exp.trials) < 50
        assert api.state.experiments[("ns", exp.name)]["spec"]["maxTrialCount"] == len(exp.trials)


def test_stop_reads_again_when_katib_adds_trials_between_read_and_patch():
    with FakeKubernetesAPI() as api:
        # the watcher reads once; this test drives every other read itself
        exp = start_katib(api, spec(max_trials=50, parallel_trials=2), RECORDED, "w", poll=3600)
        while not exp.trials:
            exp.wait(0.05)
        key, refresh, raced = ("ns", exp.name), exp.refresh, []

        def refresh_then_katib_acts():
            refresh()
            if not raced:  # Katib's controller makes trials after stop() read the count, before it patches
                raced.append(True)
                with api.state.lock:
                    api.state.advance(key)

        exp.refresh = refresh_then_katib_acts
        exp.stop()
        patches = [r for r in api.state.requests if r[0] == "PATCH"]
        assert len(patches) == 2  # the first patch was refused (409: the Experiment changed), the second read again
        while exp.status == "running":
            refresh()
        made = len(api.state.trials[key])
        assert exp.status == "stopped" and len(exp.trials) == made
        assert api.state.experiments[key]["spec"]["maxTrialCount"] == made


class FakeRun:
    def __init__(self, status, metrics):
        self.id, self.status, self.metrics, self.waited = "run-1", status, metrics, False

    def wait(self, **_):
        self.waited = True


def test_trial_runner_types_parameters_and_prints_metric_lines(tmp_path, capsys):
    package = tmp_path / "pipeline.yaml"
    package.write_text("pipelineSpec: {}\n")
    argv = trial_argv(manifest()["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0])[3:]
    argv = [a.replace("/nbmagic/pipeline.yaml", str(package)) for a in argv]
    substituted = [
        a.replace("${trialParameters.lr}", "0.0031")
        .replace("${trialParameters.epochs}", "12")
        .replace("${trialParameters.kind}", "gbm")
        .replace("${trialParameters.units}", "128")
        for a in argv
    ]
    seen = {}

    def submit(pipeline_yaml, **kw):
        seen.update(kw, pipeline_yaml=pipeline_yaml)
        seen["run"] = FakeRun("succeeded", {"val_loss": 0.25, "acc": 0.9, "note": "text"})
        return seen["run"]

    assert trial_runner.main(substituted, submit=submit) == 0
    assert seen["parameters"] == {"lr": 0.0031, "epochs": 12, "kind": "gbm", "units": 128, "shuffle": False}
    assert [type(seen["parameters"][k]) for k in ("lr", "epochs", "units", "shuffle")] == [float, int, int, bool]
    assert seen["host"] == "http://ml-pipeline.kubeflow:8888" and seen["namespace"] == "team-a"
    assert seen["pipeline_yaml"] == "pipelineSpec: {}\n" and seen["run"].waited
    out = capsys.readouterr().out.splitlines()
    assert all(KATIB_LINE.match(line) for line in out), out  # time-stamped: later than every reported value
    assert [line.split(" ", 1)[1] for line in out] == ["val_loss=0.25", "acc=0.9"]
    # a failed run or a missing objective fails the trial (Katib then counts it as failed)
    assert trial_runner.main(substituted, submit=lambda *a, **k: FakeRun("failed", {})) == 1
    assert trial_runner.main(substituted, submit=lambda *a, **k: FakeRun("succeeded", {"acc": 1})) == 1
    with pytest.raises(SystemExit):
        trial_runner.main(["--host", "h"])
    assert (
        trial_runner.main(
            ["--host", "h", "--pipeline-package", str(package), "--type", "epochs=int", "--param", "epochs=ten"],
            submit=submit,
        )
        == 1
    )
    assert "parameter 'epochs' is int" in capsys.readouterr().err


def test_changed_step_code_names_a_new_katib_experiment():
    names = []
    with FakeKubernetesAPI() as api:
        for code in ("train:aaa", "train:aaa", "train:bbb"):
            exp = start_katib(api, spec(max_trials=1), RECORDED, **TEAM_A, code=code)
            exp.wait(20)
            names.append((exp.name, exp.resumed))
    assert names[0][0] == names[1][0] != names[2][0]
    assert [resumed for _, resumed in names] == [
        False,
        True,
        False,
    ]  # the same experiment again is watched, not re-created


def test_trial_job_is_a_valid_batch_v1_job_and_misspellings_are_refused():
    exp = manifest(spec(algorithm="tpe", seed=1), service_account="trainer")
    job = exp["spec"]["trialTemplate"]["trialSpec"]
    assert job_errors(job) == [] and katib_errors(exp) == []
    pod = job["spec"]["template"]["spec"]
    for where, good, bad in (
        (pod["containers"][0], "volumeMounts", "volumeMountz"),
        (pod, "restartPolicy", "restartPolicyy"),
        (job["spec"], "backoffLimit", "backoffLimitt"),
    ):
        where[bad] = where.pop(good)
        problems = job_errors(job)
        assert any(bad in p for p in problems), problems
        assert any(bad in p for p in katib_errors(exp))
        where[good] = where.pop(bad)
    pod["containers"][0].pop("name")
    assert any("'name' is a required property" in p for p in job_errors(job))


def test_early_stopping_becomes_katibs_medianstop():
    exp = manifest(spec(algorithm="tpe", seed=1, early_stopping="medianstop", min_trials=5, start_step=3))
    assert exp["spec"]["earlyStopping"] == {
        "algorithmName": "medianstop",
        "algorithmSettings": [{"name": "min_trials_required", "value": "5"}, {"name": "start_step", "value": "3"}],
    }
    assert exp["spec"]["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    assert schema_errors(exp) == [] and katib_errors(exp) == []
    exp["spec"]["earlyStopping"]["algorithmSetting"] = exp["spec"]["earlyStopping"].pop("algorithmSettings")
    assert any("algorithmSetting" in p for p in schema_errors(exp))
    assert "earlyStopping" not in manifest(spec(algorithm="tpe"))["spec"]


def test_a_trial_katib_stopped_early_is_pruned_not_failed():
    from nbmagic.tune.katib import _trial_from

    stopped = {
        "metadata": {"name": "e-0003"},
        "spec": {"parameterAssignments": [{"name": "lr", "value": "0.5"}]},
        "status": {
            "conditions": [
                {"type": "Running", "status": "False"},
                {"type": "EarlyStopped", "status": "True", "message": "Trial is early stopped"},
            ],
            "observation": {"metrics": [{"name": "val_loss", "latest": "0.9"}]},
        },
    }
    trial = _trial_from(stopped, 3, "val_loss")
    assert (trial.status, trial.error, trial.objective) == ("pruned", "Trial is early stopped", None)
    stopped["status"]["conditions"][-1]["type"] = "Killed"
    assert _trial_from(stopped, 3, "val_loss").status == "failed"


def test_katib_reads_each_metric_as_its_final_value_as_nbmagic_does():
    from helpers.katib_collector import metric_strategies, observation, parse_text_logs

    exp = manifest()  # minimize val_loss, additional acc: Katib's defaults would read min of both
    assert schema_errors(exp) == [] and katib_errors(exp) == []
    lines = [
        "2026-01-01T00:00:01.000001Z epoch 0: val_loss=0.5 acc=0.6",
        "2026-01-01T00:00:02.000001Z epoch 1: val_loss=0.2 acc=0.8",
        "2026-01-01T00:00:03.000001Z epoch 2: val_loss=0.4 acc=0.7",  # overfits: the final value is not the best
    ]
    seen = observation(
        parse_text_logs("\n".join(lines), ["val_loss", "acc"]), ["val_loss", "acc"], metric_strategies(exp)
    )
    assert seen["val_loss"]["min"] == "0.2" and seen["acc"]["max"] == "0.8"
    assert seen["val_loss"]["value"] == "0.4" and seen["acc"]["value"] == "0.7"  # what nbmagic reads: latest


class RotatingRun:
    """A run whose step log is read by the relay; tests replace the log as kubelet rotation or a retry would."""

    def __init__(self):
        self.log, self.since = "", []
        self.tasks = {"train": type("Task", (), {"status": "running"})()}

    def logs(self, step, since_seconds=None):
        self.since.append(since_seconds)
        return self.log


def test_the_relay_copies_each_report_once_also_after_a_rotated_or_restarted_log():
    import io

    from nbmagic.tune.trial import ReportRelay

    run, out = RotatingRun(), io.StringIO()
    relay = ReportRelay(run, out, 3600)
    line = [f"2026-01-01T00:00:0{i}.000001Z epoch {i}: val_loss=0.{9 - i}" for i in range(8)]
    run.log = "\n".join(["starting", line[0], line[1], "val_loss=1"])
    relay.poll()
    run.log = "\n".join(line[:3])
    relay.poll()
    run.log = "\n".join(line[3:5])  # rotated: the earlier lines are gone, the count of lines starts again
    relay.poll()
    run.log = "\n".join([line[4], line[5]])
    relay.poll()
    run.log = "\n".join([line[0], line[6], line[7]])  # a line copied before: not copied twice
    relay.poll()
    assert out.getvalue().splitlines() == line
    # the whole log once, then its last seconds only (since the last read, with a margin)
    assert run.since[0] is None and all(30 <= s < 40 for s in run.since[1:]), run.since


def test_pod_logs_asks_the_api_server_for_the_last_seconds_only():
    from helpers.kfp_api_server import PodLogServer
    from nbmagic.run.pod_logs import PodLogs

    server = PodLogServer()
    server.add_pod("train-pod", "2026-01-01T00:00:00.000001Z val_loss=0.5\n")
    server.start()
    try:
        pods = PodLogs("run-1", server.url, lambda text: text)
        assert "val_loss=0.5" in pods.read("kubeflow", "train-pod")
        assert "val_loss=0.5" in pods.read("kubeflow", "train-pod", since_seconds=35)
        first, second = server.log_reads()
        assert "sinceSeconds" not in first.query and second.query["sinceSeconds"] == ["35"]
    finally:
        server.stop()


class LoggingRun(FakeRun):
    """A finished run whose step logs are read by the relay: ``logs`` maps step -> text or an exception."""

    def __init__(self, logs, status="succeeded", metrics=None):
        super().__init__(status, metrics or {"val_loss": 0.5})
        self._logs = logs
        self.tasks = {step: type("Task", (), {"status": "done"})() for step in logs}
        self.terminated = False

    def logs(self, step, since_seconds=None):
        if isinstance(self._logs[step], Exception):
            raise self._logs[step]
        return self._logs[step]

    def terminate(self):
        self.terminated = True


def _trial_args(tmp_path):
    package = tmp_path / "pipeline.yaml"
    package.write_text("pipelineSpec: {}\n")
    return ["--host", "h", "--pipeline-package", str(package), "--metric", "val_loss", "--poll", "3600"]


def test_a_relay_error_is_one_line_and_the_final_lines_come_after_every_relayed_one(tmp_path, capsys):
    ahead = "2099-01-01T00:00:00.999999Z epoch 0: val_loss=0.9"  # a step whose clock runs ahead
    run = LoggingRun({"broken": RuntimeError("connection reset\nby peer"), "train": ahead})
    assert trial_runner.main(_trial_args(tmp_path), submit=lambda *a, **k: run) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == ahead and [line.split(" ", 1)[1] for line in out[1:]] == ["val_loss=0.5"]
    assert out[1].split(" ", 1)[0] == "2099-01-01T00:00:01.000000Z"  # Katib takes it as the latest value
    (warning,) = [line for line in captured.err.splitlines() if "cannot relay" in line]
    assert "'broken'" in warning and "RuntimeError: connection reset by peer" in warning


def test_sigterm_is_not_swallowed_by_code_that_catches_exception(tmp_path, capsys):
    import os
    import signal

    class Swallowing(LoggingRun):
        def wait(self, **_):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except Exception:  # noqa: BLE001 - client code that catches every error while waiting
                pass

    import time

    run = Swallowing({"train": ""})
    assert trial_runner.main(_trial_args(tmp_path), submit=lambda *a, **k: run) == 143
    assert run.terminated and "terminated" in capsys.readouterr().err
