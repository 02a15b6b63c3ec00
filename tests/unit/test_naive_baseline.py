"""Smoke test of the naive plain-SimPy baseline used by the benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BASELINE_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "naive_simpy_baseline.py"


@pytest.fixture(scope="module")
def baseline():
    # benchmarks/ is not a package, so load the script by file path.
    spec = importlib.util.spec_from_file_location("naive_simpy_baseline", BASELINE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reading_count_and_keys(baseline):
    citizens, days = 50, 5
    result = baseline.run_naive(citizens=citizens, days=days, seed=1)
    assert set(result) == {"citizens", "days", "readings", "alerts", "wall_s", "readings_per_s"}
    assert result["citizens"] == citizens
    assert result["days"] == days
    assert result["readings"] == citizens * days * 6
    assert 0 <= result["alerts"] <= result["readings"]
    assert result["wall_s"] > 0
    assert result["readings_per_s"] > 0


def test_same_seed_same_counts(baseline):
    first = baseline.run_naive(citizens=20, days=3, seed=7)
    second = baseline.run_naive(citizens=20, days=3, seed=7)
    assert (first["readings"], first["alerts"]) == (second["readings"], second["alerts"])


def test_rejects_empty_runs(baseline):
    with pytest.raises(ValueError, match="citizens"):
        baseline.run_naive(citizens=0, days=1, seed=1)
    with pytest.raises(ValueError, match="days"):
        baseline.run_naive(citizens=1, days=0, seed=1)
