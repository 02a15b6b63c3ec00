"""Triage off the request's critical path, durably.

A submission's transaction also writes an ``outbox`` row. This worker takes outbox rows and, in one
transaction per submission, computes the triage with the shared rules (:mod:`twin.rules`, the same
code the twin counted its alerts with), writes the ClinicalImpression ``TriagingResult``, the Task
``MeasurementForAssessment`` for the patient's care team (priority from the colour) and, for red, a
message to the team, and deletes the outbox row. A crash before that commit leaves the row, so the
triage runs at the next start: a submission answered 201 always gets exactly one triage.

The worker wakes when a submission commits in this process, and polls every ``POLL_S`` for rows
left by a crash or by another worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid

from twin.rules import triage_session
from twin.server import fhir_resources as fr
from twin.server.storage import Row, Storage, Tx
from twin.server.submission import measurement_of

log = logging.getLogger("twin.server.triage")
POLL_S = 1.0
BATCH = 50
PRIORITY = {"red": "asap", "yellow": "urgent", "green": "routine"}  # FHIR request-priority codes
PRIORITY_RANK = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}  # sort key of the worklist (-priority)


class _AlreadyDone(Exception):
    """Another worker triaged this submission first; roll back ours."""


async def triage_one(tx: Tx, outbox_id: str, payload: dict, refs) -> str:
    """Triage one submission inside ``tx``; returns the colour."""
    rows = [await tx.get(t, i) for t, i in payload["resources"]]
    values, ranges, answers, rules = {}, {}, {}, []
    for row in rows:
        if row is None:
            continue
        r = json.loads(row.body)
        sr_type, sr_id = refs.parse(r["basedOn"][0]["reference"])
        sr = await tx.get(sr_type, sr_id)
        if r["resourceType"] == "Observation":
            name = measurement_of(r)
            values[name] = float(r["valueQuantity"]["value"])
            if sr is not None:
                ranges[name] = fr.ranges_from_service_request(json.loads(sr.body))
        elif r["resourceType"] == "QuestionnaireResponse":
            answers.update({item["linkId"]: bool(item["answer"][0]["valueBoolean"]) for item in r.get("item") or []})
            q_ref = r.get("questionnaire")
            if q_ref:
                q = await tx.get(*refs.parse(q_ref))
                if q is not None:
                    rules = fr.question_rules_from_questionnaire(json.loads(q.body))
    finding = triage_session(values, ranges, answers, rules)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    patient, episode, team, org = payload["patient"], payload["episode"], payload["team"], payload["org"]
    investigated = [refs.url(t, i) for t, i in payload["resources"]]
    ci_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    ci = fr.clinical_impression_triage(refs, ci_id, patient, episode, investigated, finding.colour, list(finding.reasons), now)
    priority = PRIORITY[finding.colour]
    task = fr.task_for_assessment(refs, task_id, patient, episode, team, refs.url("ClinicalImpression", ci_id), priority, now)
    new = [Row("ClinicalImpression", ci_id, 1, now, patient, episode, team, org, ci.get("status"), "TriagingResult",
               now, None, f"triage:{outbox_id}", json.dumps(ci)),
           Row("Task", task_id, 1, now, patient, episode, team, org, task.get("status"), "MeasurementForAssessment",
               now, PRIORITY_RANK[priority], f"task:{outbox_id}", json.dumps(task))]
    if finding.colour == "red":
        msg_id = str(uuid.uuid4())
        msg = fr.communication(refs, msg_id, patient, episode, refs.url("Patient", patient), refs.url("CareTeam", team),
                               "Red alert: " + ", ".join(finding.reasons), now)
        new.append(Row("Communication", msg_id, 1, now, patient, episode, team, org, msg.get("status"), "message", now,
                       None, f"message:{outbox_id}", json.dumps(msg)))
    if not await tx.outbox_done(outbox_id):
        raise _AlreadyDone
    await tx.insert(new)
    return finding.colour


class TriageWorker:
    def __init__(self, storage: Storage, refs) -> None:
        self.storage, self.refs = storage, refs
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.triaged = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="triage-worker")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def drain(self) -> int:
        """Triage everything pending now; returns how many were done."""
        done = 0
        while True:
            async with self.storage.transaction() as tx:
                pending = await tx.outbox_pending("triage", BATCH)
            if not pending:
                return done
            for outbox_id, payload in pending:
                try:
                    async with self.storage.transaction() as tx:
                        await triage_one(tx, outbox_id, json.loads(payload), self.refs)
                    done += 1
                except _AlreadyDone:
                    pass
            self.triaged += done

    async def _run(self) -> None:
        while True:
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the worker alive; the row stays in the outbox and is retried
                log.exception("triage failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=POLL_S)
            self.wake.clear()
