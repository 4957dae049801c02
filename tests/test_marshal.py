"""Typed marshalling: per-type round trips, manifests, the dill fallback, refusals and tamper detection."""

from __future__ import annotations

import datetime
import decimal
import json
import socket
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbmagic.runtime import marshal
from nbmagic.runtime.marshal import MarshalError, MarshalWarning
from nbmagic.runtime.marshal.base import hash_file


@pytest.fixture
def vdir(tmp_path):
    counter = iter(range(10_000))

    def make() -> Path:
        d = tmp_path / f"v{next(counter)}"
        d.mkdir()
        return d

    return make


def roundtrip(obj, vdir, name="x", **kw):
    d = vdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MarshalWarning)  # typed values must never fall back to dill
        manifest = marshal.save(obj, d, name, **kw)
    assert json.loads((d / "manifest.json").read_text()) == manifest
    return manifest, marshal.load(d, name, **({"mmap": kw["mmap"]} if "mmap" in kw else {}))


def test_module_imports_only_stdlib():
    code = (
        "import sys, nbmagic; before = set(sys.modules); import nbmagic.runtime.marshal as m; "
        "heavy = {'numpy', 'pandas', 'pyarrow', 'dill', 'joblib', 'sklearn', 'xxhash', 'torch', 'keras', "
        "'xgboost', 'lightgbm'} & set(sys.modules); "
        "others = [n for n in set(sys.modules) - before if n.startswith('nbmagic') and n != 'nbmagic.runtime' "
        "and not n.startswith('nbmagic.runtime.marshal')]; "
        "assert not heavy and not others, (heavy, others)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for path in Path(marshal.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert "from nbmagic" not in source and "import nbmagic" not in source, path.name


# ---------------------------------------------------------------------------------------- numpy


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.array(3.5),  # 0-d
        np.zeros((0, 3)),  # empty
        np.asfortranarray(np.random.default_rng(0).random((5, 7))),
        np.arange(20)[::3],  # non-contiguous
        np.array([b"ab", b"c"]),
        np.array(["héllo", "x"]),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.array([1 + 2j, 3j], dtype=np.complex64),
        np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
        np.array([True, False]),
    ],
)
def test_numpy_arrays_roundtrip_without_pickle(arr, vdir):
    manifest, back = roundtrip(arr, vdir)
    assert manifest["format"] == "npy" and manifest["type"] == "numpy.ndarray"
    assert type(back) is np.ndarray and back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["size"] == sum(f["size"] for f in manifest["files"])


def test_object_array_is_pickled(vdir):
    arr = np.array([1, "a", None, {"k": 2}], dtype=object)
    manifest, back = roundtrip(arr, vdir)
    assert manifest["format"] == "pickle" and back.dtype == object and list(back) == list(arr)


@pytest.mark.parametrize(
    "value",
    [
        np.float32(1.5),
        np.int64(-7),
        np.bool_(True),
        np.complex128(1 - 1j),
        np.datetime64("2024-02-03"),
        np.str_("abc"),
        np.uint8(255),
    ],
)
def test_numpy_scalar_stays_a_scalar_of_its_dtype(value, vdir):
    manifest, back = roundtrip(value, vdir)
    assert manifest["format"] == "npy-scalar"
    assert type(back) is type(value) and back == value


def test_large_array_loads_memory_mapped_and_copy_on_write(vdir, monkeypatch):
    monkeypatch.setattr(marshal.base, "MMAP_THRESHOLD", 1 << 20)
    arr = np.random.default_rng(1).random(300_000)  # 2.4 MB
    d = vdir()
    marshal.save(arr, d, "big")
    back = marshal.load(d)
    assert type(back) is np.ndarray and back.base is not None and not back.flags.owndata
    np.testing.assert_array_equal(back, arr)
    back[0] = -1.0  # writable, but private: the stored file is untouched
    np.testing.assert_array_equal(marshal.load(d), arr)
    eager = marshal.load(d, mmap=False)
    assert eager.flags.owndata
    eager[1] = -2.0
    np.testing.assert_array_equal(marshal.load(d, mmap=False), arr)


def test_memmap_input_is_stored_as_ndarray(vdir, tmp_path):
    mm = np.memmap(tmp_path / "m.dat", dtype="f4", mode="w+", shape=(10,))
    mm[:] = np.arange(10)
    manifest, back = roundtrip(mm, vdir)
    assert manifest["type"] == "numpy.ndarray" and type(back) is np.ndarray
    assert marshal.fingerprint(mm) == marshal.fingerprint(np.asarray(mm).copy())


def test_fingerprint_equals_saved_hash_and_depends_on_type(vdir):
    arr = np.arange(5.0)
    d = vdir()
    assert marshal.fingerprint(arr) == marshal.save(arr, d, "a")["hash"]
    assert marshal.fingerprint(np.array(2.0)) != marshal.fingerprint(np.float64(2.0))
    assert marshal.fingerprint([1, 2]) is None


# ---------------------------------------------------------------------------------------- pandas


def _frame(n=300):
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {
            "f": rng.random(n),
            "i": rng.integers(-5, 5, n),
            "u8": rng.integers(0, 9, n).astype("uint8"),
            "b": rng.random(n) > 0.5,
            "s": [f"s{i}" for i in range(n)],
            "cat": pd.Categorical(rng.choice(["a", "b"], n)),
            "t": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "td": pd.to_timedelta(np.arange(n), unit="s"),
            "ni": pd.array(rng.integers(0, 3, n), dtype="Int64"),
            "nan": np.where(rng.random(n) > 0.5, np.nan, 1.0),
        }
    )


@pytest.mark.parametrize("index", [None, "named", "strings", "range_offset", "multi", "datetime"])
def test_dataframes_roundtrip_through_parquet(index, vdir):
    df = _frame()
    if index == "named":
        df.index = pd.Index(np.arange(len(df)) * 3, name="key")
    elif index == "strings":
        df.index = [f"r{i}" for i in range(len(df))]
    elif index == "range_offset":
        df.index = pd.RangeIndex(10, 10 + 2 * len(df), 2, name="r")
    elif index == "multi":
        df.index = pd.MultiIndex.from_arrays([np.arange(len(df)) % 3, np.arange(len(df))], names=["g", "n"])
    elif index == "datetime":
        # without its freq (Arrow does not keep one: a frame whose index has a freq goes to pickle)
        df.index = pd.DatetimeIndex(pd.date_range("2020-01-01", periods=len(df), freq="D").to_numpy(), name="day")
    manifest, back = roundtrip(df, vdir)
    assert manifest["format"] == "parquet"
    assert {"pandas", "pyarrow"} <= set(manifest["versions"])
    pd.testing.assert_frame_equal(back, df)


def test_series_roundtrip_keeps_name(vdir):
    s = pd.Series([1.5, 2.5, None], name="price", index=["a", "b", "c"])
    manifest, back = roundtrip(s, vdir)
    assert manifest["format"] == "parquet" and type(back) is pd.Series
    pd.testing.assert_series_equal(back, s)
    manifest, back = roundtrip(pd.Series([1, 2]), vdir)
    assert back.name is None and list(back) == [1, 2]


@pytest.mark.parametrize(
    "df",
    [
        pd.DataFrame({0: [1, 2], 1: [3, 4]}),  # non-string column names
        pd.DataFrame({"a": [1, "x", 2.5]}),  # mixed object column
        pd.DataFrame({"a": [[1, 2], [3]]}),  # nested values
        pd.DataFrame([[1, 2]], columns=["a", "a"]),  # duplicate columns
        pd.DataFrame({"a": [1, 2]}, dtype=object),  # ints in an object column
    ],
    ids=["int-columns", "mixed-object", "lists", "dup-columns", "object-ints"],
)
def test_frames_parquet_cannot_hold_fall_back_to_pickle(df, vdir):
    manifest, back = roundtrip(df, vdir)
    assert manifest["format"] == "pickle"
    pd.testing.assert_frame_equal(back, df)


def test_pandas_pickle_format_on_request(vdir):
    df = _frame()
    manifest, back = roundtrip(df, vdir, pandas_format="pickle")
    assert manifest["format"] == "pickle" and "buffers" in manifest["meta"]
    pd.testing.assert_frame_equal(back, df)


# ---------------------------------------------------------------------------------------- sklearn


def test_sklearn_estimator_roundtrips_and_still_predicts(vdir):
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, random_state=0)).fit(X, y)
    manifest, back = roundtrip(model, vdir)
    assert manifest["format"] == "joblib" and manifest["type"] == "sklearn.pipeline.Pipeline"
    assert {"sklearn", "joblib"} <= set(manifest["versions"])
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_estimator_holding_a_lambda_falls_back_to_dill_with_warning(vdir):
    from sklearn.preprocessing import FunctionTransformer

    ft = FunctionTransformer(lambda a: a * 2).fit(np.ones((2, 2)))
    d = vdir()
    with pytest.warns(MarshalWarning, match="variable 'ft' of type sklearn.preprocessing"):
        manifest = marshal.save(ft, d, "ft")
    assert manifest["format"] == "dill"
    np.testing.assert_array_equal(marshal.load(d).transform(np.ones((1, 2))), [[2.0, 2.0]])


# ---------------------------------------------------------------------------------------- plain values


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**80),
        1.25,
        float("inf"),
        "text",
        b"\x00bytes",
        True,
        None,
        3 + 4j,
        [1, 2.0, "3"],
        (1, (2, None)),
        {"a": [1, {2, 3}], 5: frozenset({1})},
        set(),
        {"when": datetime.datetime(2024, 1, 2, 3, 4), "amount": decimal.Decimal("1.10"), "path": Path("/x")},
        range(3),
    ],
)
def test_plain_values_roundtrip_with_their_type(value, vdir):
    manifest, back = roundtrip(value, vdir)
    assert manifest["format"] == "pickle"
    assert type(back) is type(value) and back == value


def test_int_stays_int(vdir):
    _, back = roundtrip(7, vdir)
    assert type(back) is int and back == 7


def test_container_of_arrays_is_plain_pickle_with_out_of_band_buffers(vdir):
    value = {"w": np.arange(1000.0), "df": _frame(10), "n": 3}
    manifest, back = roundtrip(value, vdir)
    assert manifest["format"] == "pickle" and manifest["meta"]["buffers"]
    assert all(o % 64 == 0 for o, _ in manifest["meta"]["buffers"])
    np.testing.assert_array_equal(back["w"], value["w"])
    pd.testing.assert_frame_equal(back["df"], value["df"])


# ---------------------------------------------------------------------------------------- dill fallback


def test_closure_falls_back_to_dill_with_a_warning_naming_variable_and_type(vdir):
    base = 10

    def add(x):
        return x + base

    d = vdir()
    with pytest.warns(MarshalWarning, match=r"variable 'add' of type function .*dill"):
        manifest = marshal.save(add, d, "add")
    assert manifest["format"] == "dill" and "dill" in manifest["versions"]
    assert marshal.load(d)(5) == 15


def test_lambda_loads_in_a_fresh_process(vdir):
    d = vdir()
    with pytest.warns(MarshalWarning):
        marshal.save(lambda x: x * 3, d, "triple")
    out = subprocess.run(
        [sys.executable, "-c", f"from nbmagic.runtime import marshal; print(marshal.load({str(d)!r})(4))"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "12"


# ---------------------------------------------------------------------------------------- refusals


def _gen():
    yield 1


@pytest.mark.parametrize(
    "make,tname",
    [
        (lambda: _gen(), "generator"),
        (threading.Lock, "_thread.lock"),
        (socket.socket, "socket.socket"),
    ],
)
def test_unserializable_value_is_a_one_line_error(make, tname, vdir):
    obj = make()
    d = vdir()
    try:
        with pytest.raises(MarshalError) as info:
            marshal.save(obj, d, "x")
    finally:
        if hasattr(obj, "close"):
            obj.close()
    msg = str(info.value)
    assert msg.startswith(f"cannot store variable 'x' of type {tname}: ") and "\n" not in msg
    assert list(d.iterdir()) == []


def test_nested_unpicklable_value_reports_the_error(vdir):
    class Holder:
        def __init__(self):
            self.g = _gen()

    d = vdir()
    with pytest.raises(MarshalError, match=r"cannot store variable 'h' of type .*Holder: .*generator"):
        marshal.save(Holder(), d, "h")
    assert list(d.iterdir()) == []


def test_save_needs_an_empty_directory(vdir):
    d = vdir()
    (d / "junk").write_text("x")
    with pytest.raises(MarshalError, match="'x'.*not empty"):
        marshal.save(1, d, "x")


# ---------------------------------------------------------------------------------------- integrity


def _stored(vdir, obj, name="model"):
    d = vdir()
    marshal.save(obj, d, name)
    return d


@pytest.mark.parametrize(
    "obj", [np.arange(1000.0), _frame(50), {"a": list(range(100))}], ids=["npy", "parquet", "pickle"]
)
def test_flipped_byte_is_detected(obj, vdir):
    d = _stored(vdir, obj)
    data = next(p for p in d.iterdir() if p.name != "manifest.json")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(MarshalError, match=r"stored value 'model' is corrupt: .*(altered)"):
        marshal.load(d)


@pytest.mark.parametrize("mmap", [True, False])
def test_altered_large_array_is_detected_on_both_load_paths(mmap, vdir, monkeypatch):
    monkeypatch.setattr(marshal.base, "MMAP_THRESHOLD", 1 << 16)
    d = _stored(vdir, np.arange(100_000.0), "weights")
    with open(d / "value.npy", "r+b") as f:
        f.seek(-8, 2)
        f.write(np.float64(-1).tobytes())
    with pytest.raises(MarshalError, match="stored value 'weights' is corrupt"):
        marshal.load(d, mmap=mmap)


def test_truncated_file_is_detected(vdir):
    d = _stored(vdir, np.arange(1000.0), "arr")
    with open(d / "value.npy", "r+b") as f:
        f.truncate(500)
    with pytest.raises(MarshalError, match="stored value 'arr' is corrupt: file value.npy is 500 bytes"):
        marshal.load(d)


def test_consistently_edited_manifest_is_detected(vdir):
    d = _stored(vdir, {"k": 1}, "cfg")
    data = d / "value.pkl"
    import pickle

    data.write_bytes(pickle.dumps({"k": 2}, protocol=5))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][0].update(size=data.stat().st_size, hash=hash_file(data, manifest["hash_algorithm"], "x"))
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError, match="'cfg' is corrupt: manifest does not match its hash"):
        marshal.load(d)
    with pytest.raises(MarshalError, match="'cfg' is corrupt"):
        marshal.load(d, expected_hash="0" * 32)


def test_missing_or_broken_manifest(vdir):
    d = vdir()
    with pytest.raises(MarshalError, match="manifest unreadable"):
        marshal.load(d, "x")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(MarshalError, match="cannot load stored value 'x': manifest unreadable"):
        marshal.load(d, "x")


def test_manifest_cannot_point_outside_its_directory(vdir):
    d = _stored(vdir, 5, "n")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][0]["path"] = "../escape"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MarshalError, match="bad file name"):
        marshal.load(d)


def test_manifest_fields(vdir):
    d = vdir()
    m = marshal.save(np.arange(3), d, "a")
    assert set(m) >= {"name", "type", "format", "files", "size", "hash", "versions", "python"}
    assert m["name"] == "a" and m["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert m["hash_algorithm"] in ("xxh3-128", "blake2b-192")


# ---------------------------------------------------------------------------------------- guarded libraries


def test_torch_module_roundtrip(vdir):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    manifest, back = roundtrip(net, vdir)
    assert manifest["format"] == "torch"
    x = torch.ones(1, 3)
    assert torch.equal(back(x), net(x))


def test_keras_model_roundtrip(vdir):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    manifest, back = roundtrip(model, vdir)
    assert manifest["format"] == "keras"
    x = np.ones((1, 3), dtype="float32")
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0))


def test_xgboost_model_roundtrip(vdir):
    xgb = pytest.importorskip("xgboost")
    X = np.random.default_rng(0).random((60, 4))
    y = (X[:, 0] > 0.5).astype(int)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, y)
    manifest, back = roundtrip(model, vdir)
    assert manifest["format"] == "xgboost" and [f["path"] for f in manifest["files"]] == ["model.json"]
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_lightgbm_booster_roundtrip(vdir):
    lgb = pytest.importorskip("lightgbm")
    X = np.random.default_rng(0).random((200, 4))
    y = X[:, 0] * 2
    booster = lgb.train({"verbose": -1, "num_leaves": 4}, lgb.Dataset(X, y), num_boost_round=5)
    manifest, back = roundtrip(booster, vdir)
    assert manifest["format"] == "lightgbm"
    np.testing.assert_allclose(back.predict(X), booster.predict(X))


def test_a_frame_whose_index_has_a_freq_goes_to_pickle_and_keeps_it(vdir):
    df = pd.DataFrame({"y": np.arange(5.0)}, index=pd.date_range("2020-01-01", periods=5, freq="D", name="day"))
    manifest, back = roundtrip(df, vdir)
    assert manifest["format"] == "pickle" and back.index.freq == df.index.freq
    pd.testing.assert_frame_equal(back, df)
