"""Katib on a cluster: build a v1beta1 Experiment as a plain dict, submit it, and watch it.

No kubeflow-katib SDK (it cannot be installed beside kfp). Each trial is a batch/v1 Job running
``python -m nbmagic.tune.trial``, which starts the compiled pipeline on KFP with the trial's typed
parameters and prints ``name=value`` lines for Katib's StdOut metrics collector.
The compiled pipeline travels in a ConfigMap mounted into the trial Job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from ..images import nbmagic_image
from ..kube import PROFILE_NAMESPACE, api_client
from .experiment import FAILED, PRUNED, RUNNING, STOPPED, SUCCEEDED, Experiment, Trial
from .space import ExperimentSpec, _fmt

GROUP, VERSION, PLURAL, TRIALS = "kubeflow.org", "v1beta1", "experiments", "trials"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
PACKAGE_DIR = "/nbmagic"
PACKAGE_FILE = "pipeline.yaml"
DEFAULT_INSTALL: tuple[str, ...] = ()  # the nbmagic image (see nbmagic.images) has kfp and nbmagic
SEEDED = ("random", "tpe", "multivariate-tpe", "cmaes", "bayesianoptimization")


def _feasible(p: Any) -> dict[str, Any]:
    if p.type in ("categorical", "discrete"):
        return {"list": list(p.values)}
    space = {"min": _fmt(p.min), "max": _fmt(p.max)}
    if p.step is not None:
        space["step"] = _fmt(p.step)
    if p.log:
        space["distribution"] = "logUniform"
    return space


def trial_command(
    spec: ExperimentSpec,
    *,
    host: str,
    pipeline_package: str,
    pipeline_name: str,
    recorded: Mapping[str, Any] | None = None,
    kfp_experiment: str | None = None,
    namespace: str | None = None,
) -> list[str]:
    """The trial runner's argv; tuned values are Katib ``${trialParameters.NAME}`` placeholders."""
    argv = [
        "python",
        "-m",
        "nbmagic.tune.trial",
        "--host",
        host,
        "--pipeline-package",
        pipeline_package,
        "--pipeline-name",
        pipeline_name,
    ]
    if kfp_experiment:
        argv += ["--experiment", kfp_experiment]
    if namespace:
        argv += ["--namespace", namespace]
    for p in spec.parameters:
        kind = recorded[p.name].type if recorded and p.name in recorded else _python_type(p)
        argv += ["--type", f"{p.name}={kind}", "--param", f"{p.name}=${{trialParameters.{p.name}}}"]
    for name, value in spec.fixed.items():
        kind = recorded[name].type if recorded and name in recorded else type(value).__name__
        argv += ["--type", f"{name}={kind}", "--param", f"{name}={value}"]
    for metric in (spec.objective, *spec.additional_metrics):
        argv += ["--metric", metric]
    return argv


def _python_type(p: Any) -> str:
    if p.type == "double":
        return "float"
    if p.type == "int":
        return "int"
    if p.type == "discrete":
        return "int" if isinstance(p.cast(p.values[0]), int) else "float"
    return "str"


def _shell_join(argv: list[str]) -> str:
    import shlex

    # single quotes: Katib replaces ${trialParameters.x} in the manifest text; the shell must not expand it
    return " ".join(shlex.quote(a) for a in argv)


def build_configmap(name: str, namespace: str, pipeline_yaml: str) -> dict[str, Any]:
    """The ConfigMap that carries the compiled pipeline to every trial."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-pipeline",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "nbmagic", EXPERIMENT_LABEL: name},
        },
        "data": {PACKAGE_FILE: pipeline_yaml},
    }


def build_experiment(
    spec: ExperimentSpec,
    *,
    name: str,
    namespace: str,
    host: str,
    pipeline_name: str,
    recorded: Mapping[str, Any] | None = None,
    image: str | None = None,
    install: tuple[str, ...] = DEFAULT_INSTALL,
    kfp_experiment: str | None = None,
    service_account: str | None = None,
    store: str | None = None,
    store_secret: str | None = None,
) -> dict[str, Any]:
    """A Katib v1beta1 Experiment (plain dict) whose trials run the pipeline on KFP.

    With ``store`` (a shared run store URI) each trial records which run it was, with its experiment and metrics,
    so ``%restore best`` finds the best trial's run there; ``store_secret`` gives the trial the store's
    credentials (the keys of :data:`nbmagic.compile.generate.STORE_SECRET_KEYS`)."""
    spec = spec.validate()
    package = f"{PACKAGE_DIR}/{PACKAGE_FILE}"
    argv = trial_command(
        spec,
        host=host,
        pipeline_package=package,
        pipeline_name=pipeline_name,
        recorded=recorded,
        kfp_experiment=kfp_experiment,
        namespace=namespace,
    )
    if store:
        argv += ["--store", store, "--katib-experiment", name, "--goal", spec.goal]
    # the nbmagic image runs the trial runner directly; another image installs what it needs first
    command = ["sh", "-c", "pip install --quiet " + " ".join(install) + " && " + _shell_join(argv)] if install else argv
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "trial",
                "image": image or nbmagic_image(),
                "command": command,
                "volumeMounts": [{"name": "pipeline", "mountPath": PACKAGE_DIR, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "pipeline", "configMap": {"name": f"{name}-pipeline"}}],
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    if store_secret and (store or "").startswith("gs://"):  # the service-account key file, mounted
        from ..compile.generate import GCS_KEY_FILE, GCS_SECRET_MOUNT, GCS_SECRET_OPTIONAL

        container = pod["containers"][0]
        container["volumeMounts"].append({"name": "nbmagic-store", "mountPath": GCS_SECRET_MOUNT, "readOnly": True})
        # the key named: a secret without it stops the pod before the trial runs (a volume without it would not)
        key_item = {"key": GCS_KEY_FILE, "path": GCS_KEY_FILE}
        pod["volumes"].append({"name": "nbmagic-store", "secret": {"secretName": store_secret, "items": [key_item]}})
        container["env"] = [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCS_SECRET_MOUNT}/{GCS_KEY_FILE}"}]
        container["env"] += [
            {"name": k, "valueFrom": {"secretKeyRef": {"name": store_secret, "key": k, "optional": True}}}
            for k in GCS_SECRET_OPTIONAL
        ]
    elif store_secret:
        from ..compile.generate import STORE_SECRET_KEYS, STORE_SECRET_OPTIONAL

        pod["containers"][0]["env"] = [
            {
                "name": k,
                "valueFrom": {"secretKeyRef": {"name": store_secret, "key": k, "optional": k not in STORE_SECRET_KEYS}},
            }
            for k in (*STORE_SECRET_KEYS, *STORE_SECRET_OPTIONAL)
        ]
    algorithm: dict[str, Any] = {"algorithmName": spec.algorithm}
    if spec.seed is not None and spec.algorithm in SEEDED:
        algorithm["algorithmSettings"] = [{"name": "random_state", "value": str(spec.seed)}]
    objective: dict[str, Any] = {"type": spec.goal, "objectiveMetricName": spec.objective}
    if spec.additional_metrics:
        objective["additionalMetricNames"] = list(spec.additional_metrics)
    # each metric is its last printed value (the step's final one), as nbmagic reads it; Katib's default would
    # be the best value of any epoch
    objective["metricStrategies"] = [{"name": m, "value": "latest"} for m in (spec.objective, *spec.additional_metrics)]
    experiment_spec: dict[str, Any] = {}
    if spec.early_stopping:  # Katib stops trials from the timestamped name=value lines nbmagic.report() prints
        experiment_spec["earlyStopping"] = {
            "algorithmName": spec.early_stopping,
            "algorithmSettings": [
                {"name": "min_trials_required", "value": str(spec.min_trials)},
                {"name": "start_step", "value": str(spec.start_step)},
            ],
        }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "nbmagic"}},
        "spec": {
            "algorithm": algorithm,
            "objective": objective,
            "parameters": [
                {"name": p.name, "parameterType": p.type, "feasibleSpace": _feasible(p)} for p in spec.parameters
            ],
            "maxTrialCount": spec.max_trials,
            "parallelTrialCount": spec.parallel_trials,
            "maxFailedTrialCount": spec.max_failed_trials,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            **experiment_spec,
            "trialTemplate": {
                "primaryContainerName": "trial",
                "trialParameters": [
                    {"name": p.name, "description": f"{p.type} {p.name}", "reference": p.name} for p in spec.parameters
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {"backoffLimit": 0, "template": {"spec": pod}},
                },
            },
        },
    }


def _trial_from(obj: Mapping[str, Any], index: int, objective: str) -> Trial:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    params = {a["name"]: a.get("value") for a in spec.get("parameterAssignments", [])}
    metrics: dict[str, float] = {}
    for metric in status.get("observation", {}).get("metrics", []) or []:
        try:
            metrics[metric["name"]] = float(metric.get("latest"))
        except (TypeError, ValueError):
            pass
    conditions = {c.get("type"): c for c in status.get("conditions", []) or [] if c.get("status") == "True"}
    state, error = RUNNING, None
    if "Succeeded" in conditions:
        state = SUCCEEDED if objective in metrics else FAILED
        error = None if objective in metrics else f"metric {objective!r} was not collected"
    elif "EarlyStopped" in conditions:  # medianstop stopped it: pruned, not failed
        state, error = PRUNED, conditions["EarlyStopped"].get("message") or "stopped early by medianstop"
    elif {"Failed", "MetricsUnavailable", "Killed"} & set(conditions):
        kind = next(k for k in ("Failed", "MetricsUnavailable", "Killed") if k in conditions)
        state, error = FAILED, conditions[kind].get("message") or kind
    started, ended = status.get("startTime"), status.get("completionTime")
    return Trial(
        number=index,
        name=obj.get("metadata", {}).get("name", ""),
        parameters=params,
        status=state,
        objective=metrics.get(objective) if state == SUCCEEDED else None,
        metrics=metrics,
        duration=_seconds(started, ended),
        error=error,
    )


def _seconds(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


class KatibExperiment(Experiment):
    """A submitted Katib Experiment, polled in a background thread; same surface as the local one."""

    backend = "katib"

    def __init__(self, spec: ExperimentSpec, manifest: dict[str, Any], *, client: Any, poll: float = 5.0) -> None:
        super().__init__(manifest["metadata"]["name"], spec)
        self.namespace = manifest["metadata"]["namespace"]
        self.manifest = manifest
        self.raw_status: dict[str, Any] = {}
        self._client = client
        self._poll = poll
        self._stop_requested = False
        self._resource_version: str | None = None
        self.resumed = False  # True when the Experiment already existed and is watched again

    def _api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._client)

    def submit(self, configmap: dict[str, Any] | None = None) -> KatibExperiment:
        """Create the ConfigMap (if any) and the Experiment, then start watching.

        The default name covers the search space, objective, algorithm and the steps' code, so an Experiment
        that already exists under it is this same experiment: it is watched again (resumed), as locally.
        """
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        def create(call: Any, body: dict[str, Any]) -> bool:
            try:
                call(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                return False
            return True

        if configmap is not None:
            create(
                lambda body: client.CoreV1Api(self._client).create_namespaced_config_map(self.namespace, body),
                configmap,
            )
        api = self._api()
        self.resumed = not create(
            lambda body: api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body),
            self.manifest,
        )
        threading.Thread(target=self._watch, name=f"nbmagic-katib-{self.name}", daemon=True).start()
        return self

    def refresh(self) -> None:
        """Read the Experiment's status and its Trials once."""
        api = self._api()
        obj = api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        listed = api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, TRIALS, label_selector=f"{EXPERIMENT_LABEL}={self.name}"
        )
        items = sorted(
            listed.get("items", []), key=lambda t: (t["metadata"].get("creationTimestamp", ""), t["metadata"]["name"])
        )
        trials = [_trial_from(item, i, self.spec.objective) for i, item in enumerate(items)]
        status = obj.get("status", {}) or {}
        conditions = {c.get("type"): c for c in status.get("conditions", []) or [] if c.get("status") == "True"}
        with self._lock:
            self.raw_status = status
            self._resource_version = obj.get("metadata", {}).get("resourceVersion")
            self._trials = trials
            if "Succeeded" in conditions:
                self.status = STOPPED if self._stop_requested else SUCCEEDED
                self.message = conditions["Succeeded"].get("message", "")
            elif "Failed" in conditions:
                self.status = FAILED
                shown = "; ".join(f"trial {n}: {e}" for n, e in self.errors[-3:])
                self.message = (conditions["Failed"].get("message", "") + (f": {shown}" if shown else "")).strip()

    def _watch(self) -> None:
        failures = 0
        while not self._done.is_set():
            try:
                self.refresh()
                failures = 0
            except Exception as exc:  # keep watching through a flaky API server, up to a point
                failures += 1
                self.message = f"cannot read experiment {self.name!r}: {exc}".splitlines()[0]
                if failures >= 5:
                    self.status = FAILED
            self._notify()
            if self.status != RUNNING:
                self._done.set()
                self._notify()
                return
            time.sleep(self._poll)

    def stop(self, wait: bool = False, attempts: int = 20) -> KatibExperiment:
        """Lower maxTrialCount to the trials created so far: Katib starts no more, running ones end.

        Read-then-patch under the Experiment's resourceVersion: if Katib changed it in between (it may have
        created more trials), the API server answers 409 and the count is read again.
        """
        from kubernetes.client.rest import ApiException

        with self._lock:
            self._stop_requested = True
        for attempt in range(attempts):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the API is flaky: the last poll's count is the best we know
                pass
            with self._lock:
                created = self.raw_status.get("trials") if isinstance(self.raw_status.get("trials"), int) else 0
                count = max(1, len(self._trials), created)
                version = self._resource_version
            patch: dict[str, Any] = {"spec": {"maxTrialCount": count}}
            if version and attempt < attempts - 1:
                patch["metadata"] = {"resourceVersion": version}
            try:
                self._api().patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name, patch)
                break
            except ApiException as exc:
                if exc.status != 409:
                    raise
        if wait:
            self._done.wait()
        return self


def run_katib(
    spec: ExperimentSpec,
    pipeline_yaml: str,
    *,
    host: str,
    pipeline_name: str,
    namespace: str = PROFILE_NAMESPACE,
    recorded: Mapping[str, Any] | None = None,
    image: str | None = None,
    install: tuple[str, ...] = DEFAULT_INSTALL,
    kfp_experiment: str | None = None,
    service_account: str | None = None,
    client: Any = None,
    poll: float = 5.0,
    code: str = "",
    store: str | None = None,
    store_secret: str | None = None,
) -> KatibExperiment:
    """Build, submit and start watching a Katib Experiment for the compiled pipeline.

    ``code`` (the steps' code hashes) is part of the default name, as for local experiments.
    """
    spec = spec.validate()
    name = spec.experiment_name(pipeline_name, code)
    manifest = build_experiment(
        spec,
        name=name,
        namespace=namespace,
        host=host,
        pipeline_name=pipeline_name,
        recorded=recorded,
        image=image,
        install=install,
        kfp_experiment=kfp_experiment,
        service_account=service_account,
        store=store,
        store_secret=store_secret,
    )
    experiment = KatibExperiment(spec, manifest, client=client or api_client(), poll=poll)
    return experiment.submit(build_configmap(name, namespace, pipeline_yaml))
