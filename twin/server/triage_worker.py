"""Triage off the request's critical path, durably.

A submission's transaction also writes an ``outbox`` row. This worker takes outbox rows and, in one
transaction per batch of up to ``BATCH`` (one item alone when a batch failed), computes the triage
with the shared rules (:mod:`twin.rules`, the same code the twin counted its alerts with), writes the ClinicalImpression ``TriagingResult``, the Task
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
import math
import time

from twin.rules import ReferenceRanges, triage_session
from twin.server import fhir as fr
from twin.server import jsonfast
from twin.server.missing_job import run_missing_measurement_job
from twin.server.storage import Filter, Row, Storage, Tx, new_id
from twin.server.submission import measurement_of

log = logging.getLogger("twin.server.triage")
POLL_S = 1.0
BATCH = 10  # submissions triaged per transaction: fewer commits, yet short enough not to hold up writers
PRIORITY = {"red": "asap", "yellow": "urgent", "green": "routine"}  # FHIR request-priority codes
PRIORITY_RANK = {"routine": 0, "urgent": 1, "asap": 2, "stat": 3}  # sort key of the worklist (-priority)


async def triage_batch(tx: Tx, pending: list[tuple[str, dict]], refs, questionnaires: dict | None = None) -> int:
    """Triage submissions (outbox id, payload) inside ``tx`` with one claim and one insert for all
    (on PostgreSQL two round trips instead of two per submission); returns how many were ours —
    an item whose outbox row is gone was triaged by another worker (its DELETE waited for that
    commit)."""
    claimed = await tx.outbox_claim([outbox_id for outbox_id, _ in pending])
    rows: list[Row] = []
    messages: list[tuple[str, str]] = []
    for outbox_id, payload in pending:
        if outbox_id in claimed:  # else another worker process triaged it first
            more_rows, more_messages = triage_rows(outbox_id, payload, refs, await assess(tx, payload, refs, questionnaires))
            rows += more_rows
            messages += more_messages
    await _store(tx, rows, messages)
    return len(claimed)


async def assess(tx: Tx, payload: dict, refs, questionnaires: dict | None = None):
    """The triage finding of one submission's outbox payload, with the shared rules."""
    if "values" in payload:  # the submission carried what triage needs (see submission.triage_input)
        values = payload["values"]
        ranges = {m: ReferenceRanges(*(b if b is not None else (-math.inf if k < 2 else math.inf)
                                       for k, b in enumerate(bounds)))
                  for m, bounds in payload["ranges"].items()}
        answers = payload["answers"]
        q_ref = payload.get("questionnaire")
        rules = await _question_rules(tx, refs, q_ref, questionnaires if questionnaires is not None else {}) if q_ref else []
    else:
        values, ranges, answers, rules = await _read_inputs(tx, payload, refs, questionnaires)
    return triage_session(values, ranges, answers, rules)


async def _read_inputs(tx: Tx, payload: dict, refs, questionnaires: dict | None):
    """The triage inputs read back from the stored resources (outbox rows of older versions)."""
    by_type: dict[str, list[str]] = {}
    for t, i in payload["resources"]:
        by_type.setdefault(t, []).append(i)
    resources = []
    for t, ids in by_type.items():
        resources += [jsonfast.loads(row.body) for row in await tx.search(t, [Filter("id", "in", ids)], limit=len(ids))]
    sr_ids = sorted({refs.parse(r["basedOn"][0]["reference"])[1] for r in resources})
    service_requests = {row.id: jsonfast.loads(row.body) for row in
                        await tx.search("ServiceRequest", [Filter("id", "in", sr_ids)], limit=len(sr_ids))}
    values, ranges, answers, rules = {}, {}, {}, []
    for r in resources:
        sr = service_requests.get(refs.parse(r["basedOn"][0]["reference"])[1])
        if r["resourceType"] == "Observation":
            name = measurement_of(r)
            values[name] = float(r["valueQuantity"]["value"])
            if sr is not None:
                ranges[name] = fr.ranges_from_service_request(sr)
        elif r["resourceType"] == "QuestionnaireResponse":
            answers.update({item["linkId"]: bool(item["answer"][0]["valueBoolean"]) for item in r.get("item") or []})
            q_ref = r.get("questionnaire")
            if q_ref:
                rules = await _question_rules(tx, refs, q_ref, questionnaires if questionnaires is not None else {})
    return values, ranges, answers, rules


def triage_rows(outbox_id: str, payload: dict, refs, finding) -> tuple[list[Row], list[tuple[str, str]]]:
    """The ClinicalImpression, the Task and, for red, the message to the team; and the message's
    (recipient, id) for the inbox column."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    patient, episode, team, org = payload["patient"], payload["episode"], payload["team"], payload["org"]
    investigated = [refs.url(t, i) for t, i in payload["resources"]]
    ci_id, task_id = new_id(), new_id()
    ci = fr.clinical_impression_triage(refs, ci_id, patient, episode, investigated, finding.colour, list(finding.reasons), now)
    priority = PRIORITY[finding.colour]
    task = fr.task_for_assessment(refs, task_id, patient, episode, team, refs.url("ClinicalImpression", ci_id), priority, now)
    rows = [Row("ClinicalImpression", ci_id, 1, now, patient, episode, team, org, ci.get("status"), "TriagingResult",
                now, None, f"triage:{outbox_id}", jsonfast.dumps(ci)),
            Row("Task", task_id, 1, now, patient, episode, team, org, task.get("status"), "MeasurementForAssessment",
                now, PRIORITY_RANK[priority], f"task:{outbox_id}", jsonfast.dumps(task))]
    if finding.colour != "red":
        return rows, []
    msg_id = new_id()
    msg = fr.communication(refs, msg_id, patient, episode, refs.url("Patient", patient), refs.url("CareTeam", team),
                           "Red alert: " + ", ".join(finding.reasons), now)
    rows.append(Row("Communication", msg_id, 1, now, patient, episode, team, org, msg.get("status"), "message", now,
                    None, f"message:{outbox_id}", jsonfast.dumps(msg)))
    return rows, [(f"CareTeam/{team}", msg_id)]


async def _store(tx: Tx, rows: list[Row], messages: list[tuple[str, str]]) -> None:
    if rows:
        await tx.insert(rows)
    if messages:  # the team's inbox finds them by the indexed recipient column
        await tx.executemany("UPDATE resources SET recipient = ? WHERE type = 'Communication' AND id = ?", messages)


async def _question_rules(tx: Tx, refs, q_ref: str, cache: dict) -> list:
    """A questionnaire's answer-significance rules; questionnaires change rarely, so they are cached."""
    if q_ref not in cache:
        q = await tx.get(*refs.parse(q_ref))
        cache[q_ref] = fr.question_rules_from_questionnaire(json.loads(q.body)) if q is not None else []
    return cache[q_ref]


class TriageWorker:
    def __init__(self, storage: Storage, refs, nightly_jobs: bool = False) -> None:
        self.storage, self.refs, self.nightly_jobs = storage, refs, nightly_jobs
        self.last_job_day: dt.date | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.triaged = 0
        self.failed = 0  # items parked as triage_failed (a bug or a poison payload: look at the log)
        # Time spent triaging inside the batches' transactions (with SQLite nothing there suspends:
        # the event loop serves no request meanwhile; their shared commit is not counted) and how
        # many batches: the capacity pipeline's measured triage cost, per item and per batch.
        self.busy_s = 0.0
        self.batches = 0
        self.questionnaires: dict = {}

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="triage-worker")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def drain(self) -> int:
        """Triage everything pending now, a batch per transaction; returns how many were done."""
        done = 0
        while True:
            try:
                pending, batch_done = await self._triage_batch(BATCH)
            except Exception:  # noqa: BLE001 - one bad item must not block the outbox: go one by one
                log.exception("triage batch failed; retrying its items one at a time")
                pending, batch_done = await self._triage_singly(BATCH)
            done += batch_done
            self.triaged += batch_done
            # Let requests run between batches. (With SQLite nothing in a transaction suspends, so
            # without this a drain of a long outbox would hold the event loop from start to end.)
            await asyncio.sleep(0)
            if not pending:
                return done

    async def _triage_batch(self, limit: int) -> tuple[list, int]:
        async with self.storage.transaction() as tx:
            started = time.perf_counter()
            pending = await tx.outbox_pending("triage", limit)
            batch_done = await triage_batch(tx, [(i, jsonfast.loads(p)) for i, p in pending], self.refs,
                                            self.questionnaires) if pending else 0
            if pending:
                self.busy_s += time.perf_counter() - started
                self.batches += 1
        return pending, batch_done

    async def _triage_singly(self, limit: int) -> tuple[list, int]:
        """Each pending item in its own transaction. An item that fails alone is parked as
        ``triage_failed`` (kept, counted in ``/health``, logged) instead of being retried forever
        in front of every submission behind it."""
        async with self.storage.transaction() as tx:
            pending = await tx.outbox_pending("triage", limit)
        batch_done = 0
        for outbox_id, _payload in pending:
            try:
                _, n = await self._triage_one_by_id(outbox_id)
                batch_done += n
            except Exception:  # noqa: BLE001 - parked below, with the reason in the log
                log.exception("triage of outbox item %s failed; parked as triage_failed", outbox_id)
                async with self.storage.transaction() as tx:
                    await tx.execute("UPDATE outbox SET kind = 'triage_failed' WHERE id = ?", (outbox_id,))
                self.failed += 1
        return pending, batch_done

    async def _triage_one_by_id(self, outbox_id: str) -> tuple[list, int]:
        async with self.storage.transaction() as tx:
            rows = await tx.fetch("SELECT payload FROM outbox WHERE id = ? AND kind = 'triage'", (outbox_id,))
            if not rows:
                return [], 0
            done = await triage_batch(tx, [(outbox_id, jsonfast.loads(rows[0][0]))], self.refs, self.questionnaires)
        return rows, done

    async def _nightly(self) -> None:
        """Yesterday's missing-measurement job, once per UTC day (the database stops a second run)."""
        yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        if self.last_job_day != yesterday:
            self.last_job_day = yesterday
            created = await run_missing_measurement_job(self.storage, self.refs, yesterday)
            if created is not None:
                log.info("missing-measurement job for %s: %d tasks", yesterday, created)

    async def _run(self) -> None:
        while True:
            try:
                await self.drain()
                if self.nightly_jobs:
                    await self._nightly()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the worker alive; the row stays in the outbox and is retried
                log.exception("triage failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=POLL_S)
            self.wake.clear()
