"""A submission answered 201 always gets its triage, also across a crash (SIGKILL) and restart."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.conftest import SCENARIOS
from tests.server.conftest import free_port, start_server
from tests.server.test_api import GREEN, bearer, login, submission
from twin.loadtest.runner import stop_process
from twin.scenario import load_scenario
from twin.seed import seed
from twin.server.storage import Filter, Storage


async def _counts(database: str) -> tuple[int, int, int]:
    storage = Storage.connect(database)
    await storage.open()
    try:
        async with storage.transaction() as tx:
            obs = await tx.count("QuestionnaireResponse")
            impressions = await tx.count("ClinicalImpression", [Filter("code", "=", "TriagingResult")])
            pending = (await tx.fetch("SELECT COUNT(*) FROM outbox"))[0][0]
        return obs, impressions, pending
    finally:
        await storage.close()


@pytest.mark.slow
def test_triage_survives_sigkill(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{tmp_path / 'crash.db'}"
    seed(load_scenario(SCENARIOS / "pilot-100.toml"), database, base)
    server = start_server("sqlite", database, port)
    accepted = 0
    try:
        with server.client() as c:
            token = login(c, "nemlogin", "citizen-0")
            for _ in range(40):
                r = c.post("/measurement/$submit-measurement", json=submission(server, 0, dict(GREEN), {"dyspnoea": True}),
                           headers=bearer(token))
                assert r.status_code == 201, r.text
                accepted += 1
    finally:
        server.process.send_signal(signal.SIGKILL)  # no shutdown: triage may be half done
        server.process.wait(10)
    submitted, triaged_before, _ = asyncio.run(_counts(database))
    assert submitted == accepted
    restarted = start_server("sqlite", database, port)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the restarted worker drains the outbox: bounded wait
            submitted, triaged, pending = asyncio.run(_counts(database))
            if triaged == accepted and pending == 0:
                break
            time.sleep(0.2)
        assert (submitted, triaged, pending) == (accepted, accepted, 0), (triaged_before, triaged, pending)
    finally:
        stop_process(restarted.process)
