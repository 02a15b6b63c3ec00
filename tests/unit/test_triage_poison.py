"""One outbox item that cannot be triaged must not block the submissions queued behind it."""

from __future__ import annotations

import asyncio
import json

from tests.unit.sqlite_storage import migrated_sqlite
from twin.server import fhir as fr
from twin.server.triage_worker import TriageWorker

GOOD = {"patient": "p-1", "episode": "e-1", "team": "ct-1", "org": "org-1",
        "resources": [["Observation", "obs-1"]], "values": {"spo2": 85.0},
        "ranges": {"spo2": [88.0, 92.0, 100.0, 101.0]}, "answers": {}, "questionnaire": None}


def test_a_poison_item_is_parked_and_the_rest_are_triaged(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "poison.db") as storage:
            async with storage.transaction() as tx:
                # created first, so it heads the queue; "values" of the wrong shape break the rules
                await tx.outbox_put("a-poison", "triage", json.dumps({**GOOD, "values": [1, 2]}), "2026-01-01T00:00:00")
                await tx.outbox_put("b-good", "triage", json.dumps(GOOD), "2026-01-01T00:00:01")
            worker = TriageWorker(storage, fr.Refs("http://127.0.0.1:1"))
            done = await worker.drain()
            async with storage.transaction() as tx:
                outbox = await tx.fetch("SELECT id, kind FROM outbox ORDER BY id")
                tasks = await tx.fetch("SELECT priority, team FROM resources WHERE type = 'Task'")
            again = await worker.drain()  # the parked item is not retried
            return done, worker.failed, outbox, tasks, again

    done, failed, outbox, tasks, again = asyncio.run(go())
    assert (done, failed) == (1, 1)
    assert outbox == [("a-poison", "triage_failed")]
    assert tasks == [(2, "ct-1")]  # red: SpO2 85 below the red limit 88 → priority asap (rank 2)
    assert again == 0
