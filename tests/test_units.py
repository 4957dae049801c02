"""One grammar per kind of quantity: Kubernetes CPU and memory, store sizes, durations."""

from __future__ import annotations

import pytest

from nbmagic import units


def test_kubernetes_quantities_use_kubernetes_parser():
    assert units.memory_bytes("2Gi") == 2 * 1024**3 and units.memory_bytes("500M") == 500 * 10**6
    assert units.cpu_millis("500m") == 500 and units.cpu_millis("1.5") == 1500
    for bad in ("2GG", "lots", ""):
        with pytest.raises(ValueError):
            units.memory_bytes(bad)


def test_sizes_take_a_trailing_b_and_any_case():
    assert units.size_bytes("5GB") == 5 * 10**9 and units.size_bytes("2GiB") == 2 * 2**30
    assert units.size_bytes("1.5gib") == int(1.5 * 2**30) and units.size_bytes("500mb") == 500 * 10**6
    assert units.size_bytes("2kb") == 2000 and units.size_bytes("100") == 100 and units.size_bytes(7) == 7
    with pytest.raises(ValueError):
        units.size_bytes("5 parsecs")


def test_one_duration_grammar_for_timeouts_and_ages():
    assert units.duration_seconds("90") == 90 and units.duration_seconds("1h30m") == 5400
    assert units.duration_seconds("2d") == 172800 and units.duration_seconds("15min") == 900
    assert units.duration_seconds("1w") == 604800 and units.duration_seconds("500ms") == 0.5
    for bad in ("soon", "5 mins", "1h-30m", ""):
        with pytest.raises(ValueError):
            units.duration_seconds(bad)


def test_sizes_print_in_decimal_units():
    from nbmagic.units import format_size

    assert [format_size(n) for n in (None, 0, 999, 1000, 312_400, 1_250_000, 3 * 10**9, 5 * 10**12)] == [
        "? B",
        "0 B",
        "999 B",
        "1.0 kB",
        "312.4 kB",
        "1.2 MB",
        "3.0 GB",
        "5000.0 GB",
    ]
