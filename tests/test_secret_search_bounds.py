"""The in-memory secret search: long texts are searched without one large joined copy, and objects it makes
while walking (a column's rows as arrays) are not mistaken for ones it has seen."""

from __future__ import annotations

import pytest

from nbmagic.runtime import secret_search
from nbmagic.runtime.secret_search import holds_secret

SECRET = "hunter2secret"


def test_texts_longer_than_a_chunk_and_chunk_borders_are_searched(monkeypatch):
    monkeypatch.setattr(secret_search, "CHARS", 64)
    monkeypatch.setattr(secret_search, "CHUNK", 8)
    words = [f"word{i:03d}" for i in range(200)]
    assert not holds_secret(words, [SECRET])
    for where in (0, 7, 8, 63, 64, 199):
        assert holds_secret([*words[:where], "x" + SECRET + "y", *words[where:]], [SECRET]), where
    assert holds_secret([*words, "a" * 500 + SECRET + "é" * 100], [SECRET])  # alone, longer than a chunk
    assert holds_secret([*words, 3, [SECRET]], [SECRET])  # not only strings
    assert not holds_secret([*words, "hunter2", "secret"], [SECRET])  # never across two strings


def test_the_joined_copy_stays_bounded_whatever_the_texts(monkeypatch):
    joined: list[int] = []
    real = secret_search._Walk._joined

    def measured(self, strings):
        joined.append(sum(map(len, strings)) + len(strings))
        return real(self, strings)

    monkeypatch.setattr(secret_search._Walk, "_joined", measured)
    monkeypatch.setattr(secret_search, "CHARS", 10_000)
    docs = ["x" * 3_000 for _ in range(40)] + ["\U0001f600"]
    assert not holds_secret(docs, [SECRET])
    assert joined and max(joined) <= 10_000 + 3_001


def test_rows_made_while_walking_a_column_are_each_searched():
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    kind = pd.ArrowDtype(pa.list_(pa.string()))
    columns = {f"c{i}": pd.array([["x"]] * 4, dtype=kind) for i in range(20)}
    columns["z"] = pd.array([[SECRET]] * 4, dtype=kind)
    assert holds_secret(pd.DataFrame(columns), [SECRET])
