"""How the gs:// store reports failures: one line with the server's own message, never a request URL (a resumable
upload's URL is a bearer capability), a missing bucket never taken for a missing object, credentials errors named
as such, NBMAGIC_STORE_RETRIES counted in attempts; against a small HTTP server answering with chosen errors
(``helpers.fake_gcs_errors``) and the real fake-gcs-server (``helpers.gcs``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.fake_gcs_errors import SESSION, FakeGCSErrors
from helpers.gcs import free_port
from nbmagic.runtime import publish
from nbmagic.store import gcs
from nbmagic.store.backends import RemoteError, open_backend
from nbmagic.store_uri import StoreURIError, parse, store_retries

URI = "gs://bkt/team"


@pytest.fixture
def fake(monkeypatch):
    with FakeGCSErrors(403) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "1")
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        yield server


def _clean(message: str) -> str:
    """``message``, checked to be one line without any request URL, path or query string."""
    assert "\n" not in message, message
    for leak in (SESSION, "upload_id", "http://", "https://", "/storage/v1", "/upload/", "?"):
        assert leak not in message, (leak, message)
    return message


def _kernel_error(call) -> str:  # noqa: ANN001
    with pytest.raises(RemoteError) as caught:
        call()
    return _clean(str(caught.value))


def _step_error(call) -> str:  # noqa: ANN001
    with pytest.raises(publish.StoreFailure) as caught:
        call()
    return _clean(str(caught.value))


def _big(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * (9 << 20))  # above 8 MiB: a resumable upload
    return path


def test_a_refused_resumable_upload_names_the_servers_message_and_never_its_session_url(tmp_path, fake):
    big = _big(tmp_path)
    message = _kernel_error(lambda: open_backend(parse(URI)).put_file("objects/ab/h/data.npy", big))
    assert message == (
        f"the run store {URI}: cannot write objects/ab/h/data.npy: 400 Invalid request: the upload session is closed"
    )
    assert any(SESSION in path for method, path in fake.requests if method == "PUT"), "the session was used"
    # a compiled step writing the same value: the same line, no URL either
    message = _step_error(lambda: publish._backend(URI).put("objects/ab/h/data.npy", source=big))
    assert message == "cannot write objects/ab/h/data.npy: 400 Invalid request: the upload session is closed"


def test_a_network_error_names_no_request_path(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "1")
    message = _kernel_error(lambda: open_backend(parse(URI)).get_bytes("runs/x.json"))
    assert message.startswith(f"the run store {URI}: cannot read runs/x.json: network error (ConnectionError: ")
    assert "Connection refused" in message
    step_store = publish._backend(URI)
    step_store.retry = step_store.retry.with_timeout(0.5)  # a step retries for two minutes: not in a test
    assert _step_error(lambda: step_store.get("runs/x.json")).startswith("cannot read runs/x.json: network error (")


def test_access_denied_carries_the_servers_reason(tmp_path, fake):
    backend = open_backend(parse(URI))
    for action, call in (
        ("read runs/x.json", lambda: backend.get_bytes("runs/x.json")),
        ("read runs/x.json", lambda: backend.get_file("runs/x.json", tmp_path / "x")),
        ("read runs/x.json", lambda: backend.exists("runs/x.json")),
        ("delete runs/x.json", lambda: backend.delete("runs/x.json")),
        ("list runs/", lambda: list(backend.list("runs/"))),
    ):
        message = _kernel_error(call)
        assert message.startswith(f"the run store {URI}: cannot {action}: access denied (403: {fake.message}):")
        assert "check the credentials" in message
    message = _step_error(lambda: publish._backend(URI).get("runs/x.json"))
    assert message.startswith(f"cannot read runs/x.json: access denied (403: {fake.message}): check the credentials")


def test_an_unauthorized_request_is_a_credentials_error_not_a_network_error(tmp_path, fake):
    fake.set(401)
    backend = open_backend(parse(URI))
    for call in (lambda: backend.get_bytes("runs/x.json"), lambda: list(backend.list("runs/"))):
        message = _kernel_error(call)
        assert "the credentials could not be used" in message and "network error" not in message, message
        assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    message = _step_error(lambda: publish._backend(URI).exists("runs/x.json"))
    assert "the credentials could not be used" in message and "network error" not in message


def test_a_bucket_that_answers_404_is_not_a_missing_object(tmp_path, fake):
    fake.set(404)  # objects and the bucket alike: the bucket is missing
    backend = open_backend(parse(URI))
    for action, call in (
        ("read", lambda: backend.get_bytes("runs/x.json")),
        ("read", lambda: backend.get_file("runs/x.json", tmp_path / "x")),
        ("read", lambda: backend.exists("runs/x.json")),
        ("delete", lambda: backend.delete("runs/x.json")),
    ):
        assert _kernel_error(call) == f"the run store {URI}: cannot {action} runs/x.json: the bucket does not exist"
    step_store = publish._backend(URI)
    for action, call in (
        ("read", lambda: step_store.get("runs/x.json")),
        ("read", lambda: step_store.exists("runs/x.json")),
        ("delete", lambda: step_store.delete("runs/x.json")),
    ):
        assert _step_error(call) == f"cannot {action} runs/x.json: the bucket does not exist"


def test_store_retries_are_attempts_for_gcs_and_bad_values_are_one_line(fake, monkeypatch):
    fake.set(503)
    monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "3")
    message = _kernel_error(lambda: open_backend(parse(URI)).get_bytes("runs/x.json"))
    assert message == f"the run store {URI}: cannot read runs/x.json: 503 Backend Error"
    assert len([r for r in fake.requests if "x.json" in r[1]]) == 3, fake.requests  # three attempts, not seconds
    fake.requests.clear()
    monkeypatch.setenv("NBMAGIC_STORE_RETRIES", "1")
    _kernel_error(lambda: open_backend(parse(URI)).get_bytes("runs/x.json"))
    assert len([r for r in fake.requests if "x.json" in r[1]]) == 1, fake.requests
    monkeypatch.delenv("NBMAGIC_STORE_RETRIES")
    assert store_retries() == 3
    for bad in ("abc", "0", "-2", "1.5", "99999999999999999999", "21"):
        monkeypatch.setenv("NBMAGIC_STORE_RETRIES", bad)
        for uri in (URI, "s3://team-bucket/runs"):
            with pytest.raises(StoreURIError) as caught:
                open_backend(parse(uri))
            message = str(caught.value)
            assert message == (
                f"$NBMAGIC_STORE_RETRIES {bad!r}: give the number of attempts of each store request, 1 to 20"
            )


def test_ip_address_buckets_are_refused():
    for uri in ("gs://192.168.5.4", "gs://192.168.5.4/runs", "s3://10.0.0.1/runs"):
        with pytest.raises(StoreURIError) as caught:
            parse(uri)
        assert str(caught.value) == f"--store {uri!r}: {uri.split('/')[2]!r} is an IP address, not a bucket name"
    assert parse("gs://runs.192.168.5.4").bucket == "runs.192.168.5.4"  # a dotted name that is no address


def test_missing_bucket_reads_on_a_real_gcs_api(tmp_path, gcs_store):
    missing = open_backend(parse("gs://nbmagic-no-such-bucket/runs"))
    for action, call in (
        ("read", lambda: missing.get_bytes("k")),
        ("read", lambda: missing.get_file("k", tmp_path / "k")),
        ("read", lambda: missing.exists("k")),
        ("delete", lambda: missing.delete("k")),
    ):
        with pytest.raises(RemoteError) as caught:
            call()
        message = str(caught.value)
        assert (
            message == f"the run store gs://nbmagic-no-such-bucket/runs: cannot {action} k: the bucket does not exist"
        )
    assert not (tmp_path / "k").exists()
    step_store = publish._backend("gs://nbmagic-no-such-bucket/runs")
    with pytest.raises(publish.StoreFailure, match=r"^cannot read k: the bucket does not exist$"):
        step_store.get("k")
    # in a bucket that exists a missing object is None, and the bucket is asked about once per backend
    backend = open_backend(parse(gcs_store.uri))
    asked = []
    real_exists = backend.bucket.exists
    backend.bucket.exists = lambda **kw: asked.append(1) or real_exists(**kw)
    assert backend.get_bytes("a") is None and not backend.exists("b") and not backend.get_file("c", tmp_path / "c")
    backend.delete("d")
    assert len(asked) == 1


def test_listing_pages_through_many_keys(monkeypatch, gcs_store):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(gcs, "PAGE_SIZE", 100, raising=False)
    backend = open_backend(parse(gcs_store.uri))
    keys = [f"runs/{i:05d}.json" for i in range(250)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: backend.put_bytes(key, b"x"), keys))
    backend.put_bytes("runsx/other.json", b"x")
    pages = []
    real_list = backend.bucket.client.list_blobs

    def list_blobs(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        iterator = real_list(*args, **kwargs)
        pages.append(iterator)
        return iterator

    monkeypatch.setattr(backend.bucket.client, "list_blobs", list_blobs)
    assert [b.key for b in backend.list("runs/")] == keys
    assert pages[-1].page_number == 3, "three pages of 100"
    assert [b.key for b in backend.list("runs/", "runs/00005.json")] == keys[6:]
    assert pages[-1].page_number == 3
    assert [b.key for b in backend.list("runs/", "runs/00199.json")] == keys[200:]
    assert pages[-1].page_number == 1


def test_a_step_stops_before_its_cell_when_the_store_secret_has_no_key_file(tmp_path, monkeypatch, capsys):
    from nbmagic.runtime.component import nbmagic_run

    key_file = tmp_path / "secret" / "key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    marker = tmp_path / "ran"
    store = {
        "uri": URI,
        "run": "run-1",
        "pipeline": "p",
        "steps": ["make"],
        "dag": {"make": []},
        "key_file": str(key_file),
        "secret": "team-gcs",
    }
    code = f"%%step make\nopen({str(marker)!r}, 'w').write('ran')\nx = 1"
    with pytest.raises(SystemExit):
        nbmagic_run("make", "cell 1", code, "", {}, {}, {}, store=store)
    assert not marker.exists(), "the cell did not run"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nbmagic: step 'make': cannot record the step in {URI}: the secret 'team-gcs' has no key.json"
        " (kubectl create secret generic team-gcs --from-file=key.json=SERVICE-ACCOUNT-KEY.json)"
    ]
    # a local server (no credentials sent), the key file there, or credentials not the compiled step's: no line
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    assert publish.credentials_problem(store) is None
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    key_file.parent.mkdir()
    key_file.write_text("{}")
    assert publish.credentials_problem(store) is None
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "own.json"))
    key_file.unlink()
    assert publish.credentials_problem(store) is None
