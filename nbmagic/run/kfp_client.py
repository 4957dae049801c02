"""Talk to the KFP API server: host and token settings, a plain ``kfp.Client``, run creation, one-line errors.

Where settings come from (first wins):

* host: ``host=`` argument, ``$NBMAGIC_KFP_HOST``, ``$KF_PIPELINES_ENDPOINT`` (kfp's own).
  It must be a full ``http://`` or ``https://`` URL.
* bearer token: ``existing_token=``, ``$NBMAGIC_KFP_TOKEN``. kfp.Client reads no token from the
  environment itself; its other auth (``credentials=``, IAP client ids, ``cookies=``) is passed through unchanged.
* experiment: ``experiment=``, kfp's ``$KF_PIPELINES_DEFAULT_EXPERIMENT_NAME`` /
  ``$KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME``, else ``Default``; reused when it exists.

The token only ever travels in the ``Authorization`` header and never appears in errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import NbMagicError

HOST_ENV = "NBMAGIC_KFP_HOST"
TOKEN_ENV = "NBMAGIC_KFP_TOKEN"
KFP_HOST_ENV = "KF_PIPELINES_ENDPOINT"
KFP_UI_ENV = "KF_PIPELINES_UI_ENDPOINT"


class ClusterError(NbMagicError):
    """Submitting to or talking with the KFP API server failed."""


def resolve_host(host: str | None = None) -> str:
    """The KFP API URL from ``host`` or the environment, validated, without a trailing slash."""
    value = host or os.environ.get(HOST_ENV) or os.environ.get(KFP_HOST_ENV)
    if not value:
        raise ClusterError(f"no KFP host: pass --host URL or set ${HOST_ENV}")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ClusterError(f"KFP host {value!r} is not an http(s)://HOST[:PORT][/PATH] URL")
    try:
        _ = parts.port
    except ValueError:
        raise ClusterError(f"KFP host {value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def resolve_token(existing_token: str | None = None) -> str | None:
    """The bearer token from the argument or ``$NBMAGIC_KFP_TOKEN`` (None when neither is set)."""
    return existing_token or os.environ.get(TOKEN_ENV) or None


def load_pipeline(pipeline_yaml: str | os.PathLike) -> tuple[str, dict]:
    """(text, pipeline spec dict) from IR YAML text or a path to it."""
    import yaml

    if isinstance(pipeline_yaml, os.PathLike) or (
        "\n" not in pipeline_yaml
        and (pipeline_yaml.endswith((".yaml", ".yml", ".json")) or os.path.exists(pipeline_yaml))
    ):
        path = Path(pipeline_yaml)
        try:
            text = path.read_text()
        except OSError as err:
            raise ClusterError(f"cannot read pipeline file {str(path)!r}: {err.strerror}") from None
    else:
        text = str(pipeline_yaml)
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise ClusterError(f"pipeline YAML does not parse: {str(err).splitlines()[0]}") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ClusterError("pipeline YAML is not a compiled KFP pipeline (no 'root' in its first document)")
    return text, docs[0]


_PARAM_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "NUMBER_INTEGER": ("int", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "NUMBER_DOUBLE": ("float", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "STRING": ("str", lambda v: isinstance(v, str)),
    "BOOLEAN": ("bool", lambda v: isinstance(v, bool)),
    "LIST": ("list", lambda v: isinstance(v, list)),
    "STRUCT": ("dict", lambda v: isinstance(v, dict)),
}


def check_parameters(spec: dict, parameters: dict[str, Any]) -> None:
    """Every value names a pipeline input and has its type, before anything is sent."""
    inputs = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, value in parameters.items():
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise ClusterError(f"--param {name}: not a pipeline parameter (known: {known})")
        kind = inputs[name].get("parameterType", "")
        label, ok = _PARAM_TYPES.get(kind, (kind, lambda v: True))
        if not ok(value):
            raise ClusterError(f"--param {name}: expected {label}, got {type(value).__name__} {value!r}")


def scrub(text: str, secret: str | None) -> str:
    """One line, with the secret (if any) masked."""
    line = " ".join(str(text).split())
    return line.replace(secret, "***") if secret else line


# --- errors from kfp / kfp_server_api / urllib3 -> one line ----------------------------------


@contextlib.contextmanager
def api_errors(host: str, what: str, token: str | None) -> Iterator[None]:
    import kfp_server_api
    import urllib3

    try:
        yield
    except NbMagicError:
        raise
    except kfp_server_api.ApiException as err:
        detail = err.reason or ""
        try:
            detail = json.loads(err.body or "{}").get("message") or detail
        except (ValueError, AttributeError):
            pass
        hint = " (check the token: existing_token or $NBMAGIC_KFP_TOKEN)" if err.status in (401, 403) else ""
        if err.status == 404 and what == "connecting":
            detail = "no KFP v2beta1 API here (GET /apis/v2beta1/healthz answered 404)"
        raise ClusterError(
            scrub(f"KFP API at {host} refused {what}: HTTP {err.status} {detail}{hint}", token)
        ) from None
    except urllib3.exceptions.HTTPError as err:
        reason = str(getattr(err, "reason", None) or err)
        # drop urllib3's "HTTPConnection(host=..., port=...): " / "<... object at 0x..>: " prefixes
        reason = re.sub(r"^(\w+\([^)]*\)|<[^>]*>):\s*", "", reason)
        raise ClusterError(scrub(f"cannot reach the KFP API at {host} ({what}): {reason}", token)) from None
    except (ValueError, TimeoutError, OSError) as err:
        raise ClusterError(scrub(f"KFP {what} at {host} failed: {err}", token)) from None


def connect(
    host: str | None = None, *, namespace: str | None = None, existing_token: str | None = None, **client_options: Any
) -> Any:
    """A ``kfp.Client`` for ``host`` (see module doc for defaults); errors are one-line ClusterErrors."""
    host = resolve_host(host)
    token = resolve_token(existing_token)
    options = {k: v for k, v in client_options.items() if v is not None}
    if namespace:
        options["namespace"] = namespace
    import kfp

    with api_errors(host, "connecting", token):
        healthz = None if _signs_in(options) else _healthz(host, token, options)
        if healthz is not None and healthz.multi_user and not namespace:
            raise ClusterError(f"KFP at {host} is multi-user: pass a namespace (--namespace NS)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return kfp.Client(host=host, existing_token=token, **options)


def _signs_in(options: dict[str, Any]) -> bool:
    """Whether kfp signs in itself (credentials, IAP or app client ids): its own health check then applies."""
    return any(options.get(k) for k in ("credentials", "client_id", "other_client_id")) or any(
        os.environ.get(v) for v in ("KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID")
    )


def _healthz(host: str, token: str | None, options: dict[str, Any]) -> Any:
    """One ``GET /apis/v2beta1/healthz`` (kfp.Client's own check retries 5 times, 5 s apart, on any refusal)."""
    import kfp_server_api

    config = kfp_server_api.Configuration(host=host)
    if token:
        config.api_key["authorization"] = token
        config.api_key_prefix["authorization"] = "Bearer"
    if options.get("proxy"):
        config.proxy = options["proxy"]
    if options.get("ssl_ca_cert"):
        config.ssl_ca_cert = options["ssl_ca_cert"]
    if options.get("verify_ssl") is not None:
        config.verify_ssl = options["verify_ssl"]
    api = kfp_server_api.ApiClient(config, cookie=options.get("cookies"))
    try:
        return kfp_server_api.HealthzServiceApi(api).healthz_service_get_healthz()
    finally:
        api.close()


def create_run(
    client: Any,
    text: str,
    *,
    parameters: dict[str, Any],
    run_name: str,
    experiment: str | None = None,
    namespace: str | None = None,
    pipeline_root: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
) -> Any:
    """``POST /apis/v2beta1/runs`` with the pipeline inline, in ``experiment`` (made when missing); the V2beta1Run.

    What ``kfp.Client.create_run_from_pipeline_package`` sends, through the client's generated API, which
    prints nothing (kfp's helper prints links on stdout).
    """
    import kfp_server_api
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    if enable_caching is not None:
        for task in spec.root.dag.tasks.values():
            task.caching_options.enable_cache = enable_caching
    platform = pipeline_spec_pb2.PlatformSpec()
    for doc in docs[1:]:
        json_format.ParseDict(doc, platform)
    body: dict[str, Any] = json_format.MessageToDict(spec)
    if platform != pipeline_spec_pb2.PlatformSpec():
        body = {"pipeline_spec": body, "platform_spec": json_format.MessageToDict(platform)}
    namespace = namespace or client.get_user_namespace()
    experiment_id = _experiment_id(client, _experiment_name(experiment), namespace)
    run = kfp_server_api.V2beta1Run(
        experiment_id=experiment_id,
        display_name=run_name,
        pipeline_spec=body,
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=pipeline_root, parameters=parameters),
        service_account=service_account,
    )
    return client.runs.run_service_create_run(run=run)


def _experiment_name(name: str | None) -> str:
    """kfp's rule: the given name or ``$KF_PIPELINES_DEFAULT_EXPERIMENT_NAME``, overridden by ``…_OVERRIDE_…``."""
    name = name or os.environ.get("KF_PIPELINES_DEFAULT_EXPERIMENT_NAME")
    return os.environ.get("KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", name) or "Default"


def _experiment_id(client: Any, name: str, namespace: str | None) -> str:
    """The id of the experiment called ``name``, created when there is none."""
    import kfp_server_api

    try:
        return client.get_experiment(experiment_name=name, namespace=namespace).experiment_id
    except ValueError as exc:
        if not str(exc).startswith("No experiment is found with name"):
            raise
    made = kfp_server_api.V2beta1Experiment(display_name=name, namespace=namespace)
    return client.experiments.experiment_service_create_experiment(experiment=made).experiment_id
