"""The nightly job: a Task for every scheduled measurement session that did not arrive.

FUT's measurement-missing job creates ``MissingMeasurementResolving`` Tasks (priority routine, focus
the ServiceRequest, with a message to the care team) for scheduled measurements that were not
submitted (reference/fut-infrastructure.md §5). For each active episode of care, the job looks at
the day's due ServiceRequests (their ``occurrenceTiming.repeat.dayOfWeek``) and at the measurements
submitted that day; a citizen with a due session and no submission gets one Task. The twin groups
the missed ServiceRequests of one session into one Task (FUT makes one per ServiceRequest) to keep
the worklist readable; the Task's description lists them.

The job runs once per day per database: a ``jobs`` row (name, day) is inserted in the job's own
transaction, so several worker processes never run it twice, and re-running a day creates nothing
new (each Task's identifier is unique per patient and day).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from twin.server import fhir as fr
from twin.server import jsonfast
from twin.server.storage import INTEGRITY_ERRORS, Filter, Row, Storage, Tx, new_id

JOB_NAME = "missing-measurement"
WEEKDAY = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PAGE = 5000


async def missing_for_day(tx: Tx, refs, day: dt.date, now: str) -> list[Row]:
    """The Tasks (and messages) for ``day``'s missed sessions; nothing is written."""
    weekday = WEEKDAY[day.weekday()]
    start, end = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
    # Who submitted a session that day: every session has one QuestionnaireResponse, and its times
    # have a partial index (the literal type lets both databases use it).
    submitted = {r[0] for r in await tx.fetch(
        "SELECT DISTINCT patient FROM resources WHERE type = 'QuestionnaireResponse' AND effective >= ? AND effective < ?",
        (f"{start}T00:00:00+00:00", f"{end}T00:00:00+00:00"))}
    due: dict[str, list[Row]] = defaultdict(list)
    offset = 0
    while True:
        rows = await tx.search("ServiceRequest", [Filter("status", "=", "active")], [("id", False)], limit=PAGE,
                               offset=offset)
        for r in rows:
            if r.patient in submitted:
                continue
            days = ((jsonfast.loads(r.body).get("occurrenceTiming") or {}).get("repeat") or {}).get("dayOfWeek") or []
            if weekday in days:
                due[r.patient].append(r)
        if len(rows) < PAGE:
            break
        offset += PAGE
    out = []
    for patient, srs in sorted(due.items()):
        first = min(srs, key=lambda r: r.id)
        task_id = new_id()
        names = ", ".join(sorted(fr.service_request_measurement(jsonfast.loads(r.body)) or r.id for r in srs))
        task = fr.task_missing_measurement(refs, task_id, patient, first.episode, first.team, first.id, now,
                                           timing_start=f"{start}T00:00:00+01:00", timing_end=f"{end}T00:00:00+01:00",
                                           description=f"No measurement on {start}: {names}")
        out.append(Row("Task", task_id, 1, now, patient, first.episode, first.team, first.org, task.get("status"),
                       "MissingMeasurementResolving", now, 0, f"missing:{patient}:{start}", jsonfast.dumps(task)))
    return out


async def run_missing_measurement_job(storage: Storage, refs, day: dt.date) -> int | None:
    """Create the day's missing-measurement Tasks; None if the job already ran for that day."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    try:
        async with storage.transaction() as tx:
            done = await tx.fetch("SELECT ran_at FROM jobs WHERE name = ? AND day = ?", (JOB_NAME, day.isoformat()))
            if done:
                return None
            await tx.execute("INSERT INTO jobs (name, day, ran_at) VALUES (?, ?, ?)", (JOB_NAME, day.isoformat(), now))
            rows = await missing_for_day(tx, refs, day, now)
            await tx.insert(rows)
    except INTEGRITY_ERRORS:
        return None  # another worker process is running (or ran) this day's job
    return len(rows)
