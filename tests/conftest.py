"""Shared fixtures: one kol-10k year simulated once per test session (about 3 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


@pytest.fixture(scope="session")
def kol10k():
    return load_scenario(SCENARIOS / "kol-10k.toml")


@pytest.fixture(scope="session")
def kol10k_result(kol10k):
    from twin.model import simulate

    return simulate(kol10k)


@pytest.fixture(scope="session")
def kol10k_figures(kol10k_result):
    from twin.experiment import headline_figures

    return headline_figures(kol10k_result)


@pytest.fixture(scope="session")
def pilot1000():
    return load_scenario(SCENARIOS / "pilot-1000.toml")
