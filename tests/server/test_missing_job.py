"""The nightly job: a MissingMeasurementResolving Task per citizen whose scheduled session did not come."""

from __future__ import annotations

import asyncio
import datetime as dt

from fhir.resources.R4B.task import Task

from tests.server.test_api import bearer, login, rescope
from twin.server import fhir as fr
from twin.server.missing_job import run_missing_measurement_job
from twin.server.storage import Storage

DAY = dt.date(2026, 1, 5)  # a Monday before any test submission


async def _run(server) -> tuple[int | None, int | None]:
    storage = Storage.connect(server.database)
    await storage.open()
    try:
        refs = fr.Refs(server.base_url)
        return (await run_missing_measurement_job(storage, refs, DAY),
                await run_missing_measurement_job(storage, refs, DAY))
    finally:
        await storage.close()


def test_missing_measurement_tasks_once_per_day(server):
    first, second = asyncio.run(_run(server))
    assert first and first > 0  # citizens measuring on Mondays missed their session that day
    assert second is None  # the job runs once per day
    with server.client() as c:
        team = "0"
        nurse = rescope(c, "ehealth", login(c, "ehealth", f"nurse-{team}-0"), care_team_id=f"ct-{team}")
        r = c.get("/task/Task", params={"responsible": f"CareTeam/ct-{team}", "status": "ready", "_count": "200"},
                  headers=bearer(nurse))
        assert r.status_code == 200, r.text
        missing = [e["resource"] for e in r.json().get("entry", [])
                   if any(c.get("code") == "MissingMeasurementResolving" for ext in e["resource"].get("extension", [])
                          for c in (ext.get("valueCodeableConcept") or {}).get("coding", []))]
        assert missing, "the team's worklist holds the missing-measurement Tasks"
        for t in missing:
            Task.model_validate(t)
            assert t["priority"] == "routine" and "/ServiceRequest/" in t["focus"]["reference"]
            assert DAY.isoformat() in t["description"]
