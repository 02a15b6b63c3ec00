"""``twin seed`` loads exactly the trace's population: same citizens, teams and thresholds."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from tests.conftest import SCENARIOS
from twin.model import simulate
from twin.scenario import load_scenario
from twin.seed import seed
from twin.server import fhir as fr
from twin.server.storage import Filter, Storage


async def _read(database: str):
    storage = Storage.connect(database)
    await storage.open()
    try:
        async with storage.transaction() as tx:
            srs = await tx.search("ServiceRequest", [], limit=100_000)
            episodes = await tx.search("EpisodeOfCare", [], limit=100_000)
            accounts = await tx.fetch("SELECT username, realm FROM accounts")
            teams = await tx.search("CareTeam", [Filter("type", "=", "CareTeam")], limit=10_000)
        return srs, episodes, accounts, teams
    finally:
        await storage.close()


def test_seed_matches_the_trace(tmp_path):
    scenario = load_scenario(SCENARIOS / "pilot-100.toml")
    database = f"sqlite:///{tmp_path / 'seed.db'}"
    summary = seed(scenario, database, "http://127.0.0.1:8080")
    result = simulate(scenario)
    citizens = result.citizens.set_index("citizen_id")
    assert summary.citizens == len(citizens)
    srs, episodes, accounts, teams = asyncio.run(_read(database))
    assert len(teams) == len(result.teams) and summary.care_teams == len(result.teams)
    # Every citizen's episode is followed by the team the twin gave them.
    for e in episodes:
        cid = int(e.id.removeprefix("e-"))
        assert e.team == f"ct-{citizens.loc[cid, 'team_id']}"
    # Every ServiceRequest carries the citizen's individual thresholds, exactly (replay depends on it).
    checked = 0
    for row in srs:
        cid, measurement = row.id.removeprefix("sr-").split("-", 1)
        if measurement == "questionnaire":
            continue
        ranges = fr.ranges_from_service_request(json.loads(row.body))
        for bound in ("red_low", "yellow_low", "yellow_high", "red_high"):
            expected = citizens.loc[int(cid), f"{measurement}_{bound}"]
            got = getattr(ranges, bound)
            assert got == expected or (math.isinf(got) and math.isinf(expected) and got == expected), (row.id, bound)
        checked += 1
    assert checked > 3 * len(citizens)
    assert {r for _, r in accounts} == {"nemlogin", "ehealth"}


def test_seeding_twice_is_refused(tmp_path):
    scenario = load_scenario(SCENARIOS / "pilot-100.toml")
    database = f"sqlite:///{tmp_path / 'seed.db'}"
    seed(scenario, database, "http://127.0.0.1:8080")
    with pytest.raises(ValueError, match="already seeded"):
        seed(scenario, database, "http://127.0.0.1:8080")
