"""A secret inside a numpy str/bytes/object array or a frame is refused by the store, whatever its encoding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.shell import run_ok
from nbmagic.store.objects import ObjectStore, SecretValue

SECRET = "s3cr3t-tok3n-value"
ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")


def _no_secret_under(folder, secret=SECRET):
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret.encode(e) in data for e in ENCODINGS), path


@pytest.mark.parametrize(
    "value",
    [
        np.array(["Bearer " + SECRET]),
        np.array([["x", "Bearer " + SECRET]], dtype=">U40"),  # big-endian UTF-32
        np.array([b"Bearer " + SECRET.encode()]),
        np.array(["x", "Bearer " + SECRET], dtype=object),
        pd.DataFrame({"h": ["x"] * 1000 + ["Bearer " + SECRET]}),
        pd.Series(pd.array(["Bearer " + SECRET, None], dtype="string")),
    ],
    ids=["unicode", "unicode-big-endian", "bytes", "object", "frame", "string-series"],
)
def test_a_secret_inside_an_array_or_frame_is_refused(value, tmp_path):
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(SecretValue, match="variable 'hdr' holds a secret"):
        store.put(value, "hdr", secrets=(SECRET,))
    _no_secret_under(tmp_path)


def test_a_short_secret_equal_to_an_array_element_is_refused(tmp_path):
    store = ObjectStore(tmp_path / "store")
    with pytest.raises(SecretValue):
        store.put(np.array(["ok", "abc"]), "v", secrets=("abc",))
    assert store.put(np.array(["ok", "xabcx"]), "v", secrets=("abc",)).format == "npy"  # short: only equality


def test_an_array_hidden_in_a_container_is_found_in_its_file(tmp_path):
    # a dict is pickled; the array's UTF-32 buffer is what the file holds
    store = ObjectStore(tmp_path / "store")
    value = {"headers": np.array(["Bearer " + SECRET]).reshape(1, 1)}
    with pytest.raises(SecretValue):
        store.put([value], "v", secrets=(SECRET,))
    _no_secret_under(tmp_path)


def test_a_numpy_str_array_holding_a_secret_never_reaches_the_store(ip, capsys, monkeypatch, nbmagic_home):
    monkeypatch.setenv("API_TOKEN", SECRET)
    run_ok(ip, "%pipeline_config --reuse")
    run_ok(
        ip,
        "%%step s --secret api:token=API_TOKEN\nimport os, numpy as np\n"
        "hdr = np.array(['Bearer ' + os.environ['API_TOKEN']])\nn = 1\n",
    )
    assert "variable 'hdr' holds a secret" in capsys.readouterr().out
    _no_secret_under(nbmagic_home)
