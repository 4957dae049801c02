"""%serve --cluster: InferenceService manifests checked against KServe's CRD schema, submitted to a local server
playing the Kubernetes API; predictions then go to the service URL (here a real local nbmagic server)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError

sys.path.insert(0, str(Path(__file__).parent))
from helpers.fake_kserve_api import FakeKServeAPI, validate  # noqa: E402
from helpers.serve_shell import serve_shell  # noqa: E402
from nbmagic.serve import cluster, local  # noqa: E402
from nbmagic.serve.api import make_package  # noqa: E402
from nbmagic.serve.errors import ServeError  # noqa: E402

RAW = ["AAAAC", "UUUUG"]


NOTEBOOK = """
import numpy as np
from sklearn.linear_model import LogisticRegression
vocab = {"A": 0, "C": 1, "G": 2, "U": 3}
def featurize(rows):
    return np.array([[sum(1 for c in s if vocab[c] == k) for k in range(4)] for s in rows], dtype=float)
clf = LogisticRegression().fit(featurize(["AAAAC", "UUUUG", "CCCAA", "GGGUU"]), [0, 1, 0, 1])
class Echo:
    def predict(self, x):
        return x
echo = Echo()
"""


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    with serve_shell(tmp_path_factory.mktemp("home"), NOTEBOOK) as ip:
        yield ip


@pytest.fixture()
def sk_package(shell):
    ns = shell.user_ns
    return make_package(
        ns["clf"],
        name="seq",
        model_var="clf",
        transformer=ns["featurize"],
        transformer_var="featurize",
        with_objects={"vocab": ns["vocab"]},
    )


def test_builtin_runtime_manifest_is_valid(sk_package):
    manifest = cluster.inference_service(
        sk_package,
        storage_uri="s3://bucket/models/seq",
        namespace="team-a",
        protocol="v2",
        image="registry.local/nbmagic-serve:1",
    )
    assert validate(manifest) is None
    model = manifest["spec"]["predictor"]["model"]
    assert model == {
        "modelFormat": {"name": "sklearn"},
        "storageUri": "s3://bucket/models/seq/model",
        "protocolVersion": "v2",
    }
    container = manifest["spec"]["transformer"]["containers"][0]
    assert container["image"] == "registry.local/nbmagic-serve:1"
    assert container["command"] == ["python", "-m", "nbmagic.serve.server"]
    assert "--transformer-only" in container["args"] and "--predictor-only" not in container["args"]
    assert {"name": "STORAGE_URI", "value": "s3://bucket/models/seq"} in container["env"]
    assert manifest["metadata"]["namespace"] == "team-a"


def test_custom_predictor_for_models_without_runtime(shell):
    pkg = make_package(shell.user_ns["echo"], name="echo", model_var="echo")
    manifest = cluster.inference_service(pkg, storage_uri="pvc://models/echo")
    assert validate(manifest) is None
    predictor = manifest["spec"]["predictor"]
    assert "model" not in predictor and "transformer" not in manifest["spec"]
    assert "--predictor-only" in predictor["containers"][0]["args"]
    assert predictor["containers"][0]["env"] == [{"name": "STORAGE_URI", "value": "pvc://models/echo"}]


def test_manifest_rejects_bad_storage_and_names(sk_package):
    with pytest.raises(ServeError, match="--storage-uri ftp://x must start with one of"):
        cluster.inference_service(sk_package, storage_uri="ftp://x")
    with pytest.raises(ServeError, match="server name 'Team_A' is invalid"):
        cluster.inference_service(sk_package, storage_uri="s3://b/p", namespace="Team_A")


def test_fake_api_rejects_what_kubernetes_would(sk_package):
    manifest = cluster.inference_service(sk_package, storage_uri="s3://b/p")
    manifest["spec"]["predictor"]["model"]["modelFormat"] = {}
    with FakeKServeAPI() as api:
        with pytest.raises(
            ServeError,
            match=r"creating InferenceService 'seq' in 'default' failed: 422 .*"
            r"'name' is a required property",
        ):
            cluster.submit(manifest, cluster.api_client(api.host))
        manifest = cluster.inference_service(sk_package, storage_uri="s3://b/p")
        manifest["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
        with pytest.raises(ServeError, match="unknown fields: .spec.predictor.model.storageURI"):
            cluster.submit(manifest, cluster.api_client(api.host))
        manifest = cluster.inference_service(sk_package, storage_uri="s3://b/p")
        manifest["sepc"] = manifest["spec"]
        manifest["metadata"]["nmespace"] = "default"
        with pytest.raises(ServeError, match=r"unknown fields: .metadata.nmespace, .sepc"):
            cluster.submit(manifest, cluster.api_client(api.host))


def test_deploy_uploads_submits_waits_and_predicts(sk_package, tmp_path):
    target = tmp_path / "bucket" / "seq"
    backend = local.serve(sk_package)  # stands in for the cluster's service URL: a real server, same package
    try:
        with FakeKServeAPI(url=backend.url, ready_after=3) as api:

            def deploy():
                return cluster.deploy(
                    sk_package,
                    storage_uri=f"file://{target}",
                    namespace="ml",
                    api=cluster.api_client(api.host),
                    timeout=30,
                    interval=0.2,
                )

            handle = deploy()
            assert (target / "model" / "model.joblib").is_file()
            assert (target / "transformer" / "assets" / "vocab.dill").is_file()
            methods = [(m, p.split("?")[0]) for m, p, _ in api.requests]
            base = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices"
            assert methods[0] == ("POST", base)
            assert methods[1:] == [("GET", f"{base}/seq")] * 3
            assert handle.url == backend.url and handle.status == "ready"
            assert handle.predict(RAW) == [0, 1]
            assert handle.predict(RAW, protocol="v2") == [0, 1]
            assert "featurize" in handle._repr_html_() and "kubectl logs -n ml" in handle.logs()
            # serving again replaces the existing InferenceService (409 -> GET -> PUT with its resourceVersion)
            deploy()
            put = [(p, b) for m, p, b in api.requests if m == "PUT"]
            assert len(put) == 1 and put[0][1]["metadata"]["resourceVersion"] == "1"
            handle.stop()
            assert api.requests[-1][0] == "DELETE" and not api.objects
    finally:
        backend.stop()


def test_not_ready_times_out_with_reason(sk_package, tmp_path):
    with FakeKServeAPI(ready_after=10**6) as api:
        with pytest.raises(
            ServeError, match="InferenceService 'seq' in 'default' not Ready after 1 s: RevisionMissing"
        ):
            cluster.deploy(
                sk_package,
                storage_uri=f"file://{tmp_path}/p",
                api=cluster.api_client(api.host),
                timeout=1,
                interval=0.2,
            )


def test_magic_cluster_uses_kubeconfig(shell, tmp_path, monkeypatch):
    with FakeKServeAPI(url="http://seq.ml.example.com", ready_after=1) as api:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.host}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
            "users": [{"name": "me", "user": {}}],
        }
        (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        handle = shell.run_line_magic(
            "serve",
            f"clf --transformer featurize --with vocab --name seq-c --cluster --namespace ml "
            f"--storage-uri file://{tmp_path}/store",
        )
        assert isinstance(handle, cluster.ClusterServer) and handle.url == "http://seq.ml.example.com"
        posted = next(b for m, _, b in api.requests if m == "POST")
        assert posted["spec"]["predictor"]["model"]["storageUri"] == f"file://{tmp_path}/store/model"
        assert (tmp_path / "store" / "serve.json").is_file()
    with pytest.raises(UsageError, match="--cluster needs --storage-uri"):
        shell.run_line_magic("serve", "clf --name seq-c --cluster")
    with pytest.raises(UsageError, match="--split, --port and --grpc are for local serving"):
        shell.run_line_magic("serve", "clf --name seq-c --cluster --split --storage-uri file:///tmp/x")
