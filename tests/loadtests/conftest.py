"""Fixtures of the load-test tests: a pilot-100 trace, and real servers seeded with pilot-100."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtests.schedule import load_trace
from tests.conftest import ROOT, SCENARIOS
from tests.server.conftest import free_port, start_server
from twin.loadtest.runner import stop_process
from twin.scenario import load_scenario
from twin.seed import seed


@pytest.fixture(scope="session")
def pilot_results(tmp_path_factory):
    """``results/pilot-100`` of a fresh ``twin run`` (one replication, trace and resolved scenario)."""
    out = tmp_path_factory.mktemp("results") / "pilot-100"
    subprocess.run([sys.executable, "-m", "twin.cli", "run", str(SCENARIOS / "pilot-100.toml"), "--replications", "1",
                    "--no-report", "--quiet", "--out", str(out)], cwd=ROOT, check=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def pilot_trace(pilot_results):
    return load_trace(pilot_results / "trace")


def seeded_server(tmp_path_factory, name: str):
    """``twin serve`` on a fresh SQLite file seeded with pilot-100 (nightly jobs off)."""
    port = free_port()
    database = f"sqlite:///{tmp_path_factory.mktemp(name) / 'twin.db'}"
    seed(load_scenario(SCENARIOS / "pilot-100.toml"), database, f"http://127.0.0.1:{port}")
    return start_server("sqlite", database, port)


def stop(server) -> None:
    stop_process(server.process)
