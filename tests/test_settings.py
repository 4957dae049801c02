"""Per-step settings: option parsing and validation, merging with pipeline defaults, cluster-only listing."""

from __future__ import annotations

import pytest
from IPython.core import magic_arguments

from nbmagic.errors import NbMagicError
from nbmagic.pipeline.settings import (
    SETTING_ARGUMENTS,
    SecretEnv,
    SecretFile,
    StepSettings,
    Toleration,
    VolumeMount,
    cluster_only,
    local_env,
    memory_bytes,
    merge,
    settings_from_args,
)


def _magic_with_settings():
    """A real IPython magic_arguments parser carrying SETTING_ARGUMENTS, as %%step / %pipeline_config use them."""

    def magic(line):
        return magic_arguments.parse_argstring(magic, line)

    for args, kwargs in reversed(SETTING_ARGUMENTS):
        magic = magic_arguments.argument(*args, **kwargs)(magic)
    return magic_arguments.magic_arguments()(magic)


MAGIC = _magic_with_settings()


def parse(line: str, base: StepSettings | None = None) -> StepSettings:
    return settings_from_args(magic_arguments.parse_argstring(MAGIC, line), base)


ALL = (
    "--cpu 500m --cpu-limit 2 --memory 1Gi --memory-limit 2Gi --gpu nvidia.com/gpu=2 --retries 3 "
    "--retry-backoff 1m30s --timeout 10m --env MODE=fast --env EMPTY= --secret db-creds:password=DB_PASSWORD "
    "--secret db-creds:user --secret-file tls:/etc/tls --volume data:/mnt/data --node-selector pool=gpu "
    "--toleration gpu=true:NoSchedule --toleration spot --image python:3.11-slim --packages xgboost==2.1 pyyaml "
    "--no-cache"
)


def test_every_option_parses_into_settings():
    s = parse(ALL)
    assert s == StepSettings(
        cache=False,
        image="python:3.11-slim",
        packages=("xgboost==2.1", "pyyaml"),
        cpu_request="500m",
        cpu_limit="2",
        memory_request="1Gi",
        memory_limit="2Gi",
        accelerator="nvidia.com/gpu",
        accelerator_count=2,
        retries=3,
        retry_backoff=90,
        timeout=600,
        env=(("MODE", "fast"), ("EMPTY", "")),
        secret_env=(SecretEnv("db-creds", "password", "DB_PASSWORD"), SecretEnv("db-creds", "user", "USER")),
        secret_files=(SecretFile("tls", "/etc/tls"),),
        volumes=(VolumeMount("data", "/mnt/data"),),
        node_selector=(("pool", "gpu"),),
        tolerations=(Toleration("gpu", "Equal", "true", "NoSchedule"), Toleration("spot", "Exists")),
    )


def test_no_options_keep_the_base_and_defaults():
    assert parse("") == StepSettings()
    base = parse("--memory-limit 1Gi --retries 2")
    assert parse("", base) == base
    assert parse("--retries 5", base) == StepSettings(memory_limit="1Gi", retries=5)


@pytest.mark.parametrize(
    "line, option, fragment",
    [
        ("--memory 2GG", "--memory", "'2GG' is not a memory quantity"),
        ("--memory-limit 1.5Gi", "--memory-limit", "'1.5Gi'"),
        ("--cpu 2cores", "--cpu", "'2cores' is not a CPU quantity"),
        ("--retries -1", "--retries", "-1 is negative"),
        ("--retries two", "--retries", "'two' is not a whole number"),
        ("--gpu nvidia/gpu=1", "--gpu", "'nvidia/gpu' is not a Kubernetes resource name like vendor.com/name"),
        ("--gpu NVIDIA.COM/gpu", "--gpu", "'NVIDIA.COM/gpu'"),
        ("--gpu nvidia.com/gpu=0", "--gpu", "count '0' must be a whole number >= 1"),
        ("--secret db-creds", "--secret", "'db-creds' names no key"),
        ("--secret db-creds:", "--secret", "names no key"),
        ("--secret Bad_Name:key", "--secret", "'Bad_Name' is not a Kubernetes name"),
        ("--secret-file creds", "--secret-file", "'creds' is not SECRET:/mount/path"),
        ("--secret-file creds:relative/path", "--secret-file", "'relative/path' must be an absolute path"),
        ("--volume data:mnt/data", "--volume", "'mnt/data' must be an absolute path"),
        ("--volume data:/mnt/../etc", "--volume", "without '..'"),
        ("--volume data", "--volume", "'data' is not PVC:/mount/path"),
        ("--timeout 10x", "--timeout", "'10x' is not a duration"),
        ("--timeout 0", "--timeout", "must be longer than 0 seconds"),
        ("--retry-backoff soon", "--retry-backoff", "'soon' is not a duration"),
        ("--env 1BAD=x", "--env", "'1BAD=x' is not NAME=VALUE"),
        ("--env NOVALUE", "--env", "'NOVALUE'"),
        ("--node-selector pool", "--node-selector", "'pool' is not LABEL=VALUE"),
        ("--toleration gpu=true:Sometimes", "--toleration", "effect 'Sometimes' must be one of NoSchedule"),
        ("--image 'two words'", "--image", "is not a container image reference"),
    ],
)
def test_malformed_values_are_one_clear_error_naming_the_option(line, option, fragment):
    with pytest.raises(NbMagicError) as info:
        parse(line)
    message = str(info.value)
    assert message.startswith(option + ":")
    assert fragment in message
    assert "\n" not in message


def test_bare_gpu_count_means_nvidia():
    assert parse("--gpu 2").accelerator == "nvidia.com/gpu"
    assert parse("--gpu 2").accelerator_count == 2
    assert parse("--gpu amd.com/gpu").accelerator_count == 1


def test_merge_step_wins_and_lists_combine_by_name():
    defaults = parse(
        "--memory-limit 1Gi --retries 1 --env A=1 --env B=2 --packages pandas==2.0 --volume data:/mnt/data"
    )
    step = parse("--retries 3 --env B=3 --packages pandas==2.2 rich --volume other:/mnt/data --secret s:k=K")
    merged = merge(defaults, step)
    assert merged.memory_limit == "1Gi"
    assert merged.retries == 3
    assert merged.env_dict == {"A": "1", "B": "3"}
    assert merged.packages == ("pandas==2.2", "rich")
    assert merged.volumes == (VolumeMount("other", "/mnt/data"),)
    assert merged.secret_env == (SecretEnv("s", "k", "K"),)
    assert merge(None, step) == step
    assert merge(merged, merged) == merged  # idempotent


def test_caching_is_on_only_when_both_allow_it():
    assert merge(StepSettings(), StepSettings()).cache is True
    assert merge(StepSettings(cache=False), StepSettings()).cache is False
    assert merge(StepSettings(), StepSettings(cache=False)).cache is False


def test_accelerator_type_and_count_travel_together():
    merged = merge(parse("--gpu nvidia.com/gpu=4"), parse("--gpu amd.com/gpu"))
    assert (merged.accelerator, merged.accelerator_count) == ("amd.com/gpu", 1)
    assert merge(parse("--gpu 4"), parse("--cpu 1")).accelerator_count == 4


def test_cluster_only_lists_what_local_runs_cannot_honour():
    assert cluster_only(parse("--memory-limit 1Gi --retries 2 --timeout 1m --env A=1 --no-cache")) == []
    listed = cluster_only(parse(ALL))
    text = "\n".join(listed)
    for expected in (
        "nvidia.com/gpu x2",
        "db-creds:password",
        "$DB_PASSWORD",
        "/etc/tls",
        "PVC data",
        "pool=gpu",
        "gpu=true:NoSchedule",
        "toleration spot",
        "cpu request 500m/limit 2",
        "memory request 1Gi",
        "python:3.11-slim",
    ):
        assert expected in text


def test_local_env_uses_kernel_variables_as_secret_stand_ins():
    s = parse("--env MODE=fast --secret db:password=DB_PASSWORD --secret db:user=DB_USER")
    assert local_env(s, {"DB_PASSWORD": "local-pw", "HOME": "/root"}) == {"DB_PASSWORD": "local-pw", "MODE": "fast"}


def test_memory_bytes():
    assert memory_bytes("2Gi") == 2 * 1024**3
    assert memory_bytes("500M") == 500 * 10**6
    assert memory_bytes("1024") == 1024
    with pytest.raises(NbMagicError):
        memory_bytes("2GG")


def test_help_strings_document_every_option():
    doc = MAGIC.__doc__
    for args, kwargs in SETTING_ARGUMENTS:
        assert args[0] in doc
        assert kwargs.get("help")
