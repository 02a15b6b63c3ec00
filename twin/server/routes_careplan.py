"""The careplan service: EpisodeOfCare search and ``$get-patient-procedures`` (the citizen's "todo" list).

What a citizen is asked to do lives in the careplan service: the **EpisodeOfCare** (the course,
followed by a CareTeam), its **CarePlan**, and the plan's **ServiceRequests** — each one says *what*
to measure (``code``) and *when* (``occurrenceTiming``, e.g. ``repeat {frequency 1, period 1,
periodUnit d, dayOfWeek [mon, thu]}``: once on Mondays and Thursdays).

``POST /careplan/$get-patient-procedures`` (fut-infrastructure.md §2 call 5; IG
``OperationDefinition--s-get-patient-procedures``) is how the citizen app builds its week view. The
body is ``Parameters{patient, start, end}`` (optionally ``episodeOfCare``…, ``extra``); the server
*resolves* every active ServiceRequest of an active CarePlan of an active episode of the patient into
**timing slots** that overlap ``[start, end]`` and answers, as FUT does, a ``collection`` Bundle with
the CarePlans and ServiceRequests involved plus one **Parameters** resource whose parameters
``item_1``, ``item_2``, … are the rows (columns as ``part``: CarePlan, ServiceRequest,
ServiceRequestVersionId, Activity, ResolvedTimingStart/End, TotalSubmitted, TimingType,
OccurrencesRequested). ``TotalSubmitted`` counts the measurements already submitted for that
ServiceRequest in that slot; like FUT, the part is left out when nothing was submitted.

The twin resolves the regimes its seed writes: ``periodUnit d`` (with or without ``dayOfWeek``) is
one slot per Danish calendar day (the twin's clock: +01:00, no DST) from 00:00 to 23:59:59, and
``frequency`` occurrences are requested per slot; ``periodUnit wk`` without weekdays is one slot per
ISO week (Monday–Sunday). Any other regime is one ``Unresolved`` row (no slot, the period's
submissions counted), a ServiceRequest without timing one ``Adhoc`` row; ``boundsPeriod`` limits
the slots. FUT also resolves times of day and durations and reports ``SubmittedTimely`` and
``TotalInvalidated``; the twin's ServiceRequests have none of these.

The period may span at most 31 days (the twin's bound; the real service is used week by week).
Access: a citizen asks for their own patient; a practitioner for a patient who has an episode
followed by the care team in the token — only that team's episodes are considered.

The search helpers (token-context rules, FHIR dates, operation ``Parameters``) it shares with the
measurement and task services are in :mod:`twin.server.search`.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections import defaultdict

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import fhir as fr
from twin.server import jsonfast
from twin.server.errors import bad_request
from twin.server.search import (
    LATEST,
    UTC,
    ParamSpec,
    access_scope,
    forbidden_search,
    parse_instant,
    parse_stored,
    read_parameters,
    reference_param,
    storage_instant,
)
from twin.server.service import MAX_COUNT, Service, fhir_response, page_count, read_json
from twin.server.storage import Filter, Row


# ------------------------------------------------------------------------- EpisodeOfCare search
async def search_episodes(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("EpisodeOfCare.search")
    q = request.query_params
    filters = []
    if claims.user_type == "PATIENT":
        patient = q.get("patient")
        if patient is None or self.ref_id(patient, "Patient", "patient") != claims.context.patient_id:
            raise forbidden_search("patient")
        filters.append(Filter("patient", "=", claims.context.patient_id))
    else:
        claims.require_context("CareTeam")
        team = q.get("team")
        if team is None or self.ref_id(team, "CareTeam", "team") != claims.context.care_team_id:
            raise forbidden_search("team")
        filters.append(Filter("team", "=", claims.context.care_team_id))
    if q.get("status"):
        filters.append(Filter("status", "in", q.get("status").split(",")))
    async with self.storage.transaction(one_write=True) as tx:
        await self.require_membership(tx, claims)
        rows = await tx.search_listed("EpisodeOfCare", filters, [("id", False)], limit=page_count(q))
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "EpisodeOfCare", query=str(q))
    return self.searchset(request, rows)


# ---------------------------------------------------------------------- $get-patient-procedures
OPERATION = "$get-patient-procedures"
CODE = "CAREPLAN_GETPATIENTPROCEDURES_"  # the twin's codes, in FUT's style (the IG lists none for it)
MAX_PERIOD = dt.timedelta(days=31)
MAX_MEASUREMENTS = 10_000  # one patient's measurements in ~5 weeks are a few hundred
ONE_DAY = dt.timedelta(days=1)
WEEKDAY = {d: i for i, d in enumerate(fr.WEEKDAYS)}
PROCEDURE_PARAMS: ParamSpec = {
    "patient": (("valueReference",), False),
    "episodeOfCare": (("valueReference",), True),
    "start": (("valueDateTime", "valueDate"), False),
    "end": (("valueDateTime", "valueDate"), False),
    "extra": (("valueBoolean",), False),  # accepted; the twin's ServiceRequests never allow Extra submissions
}


class Slot:
    """One row of the answer: a ServiceRequest's resolved timing slot (or its Unresolved/Adhoc row)."""

    __slots__ = ("sr", "timing_type", "start", "end", "occurrences", "submitted")

    def __init__(self, sr: Row, timing_type: str, start: dt.datetime | None, end: dt.datetime | None,
                 occurrences: int | None) -> None:
        self.sr, self.timing_type, self.start, self.end = sr, timing_type, start, end  # end exclusive
        self.occurrences, self.submitted = occurrences, 0


def _local_days(lo: dt.datetime, hi: dt.datetime):
    """The Danish calendar days that overlap ``[lo, hi)``, as (start, end) instants."""
    day = lo.astimezone(fr.TWIN_TZ).date()
    last = (hi - dt.timedelta(microseconds=1)).astimezone(fr.TWIN_TZ).date()
    while day <= last:
        start = dt.datetime.combine(day, dt.time(0), fr.TWIN_TZ)
        yield start, start + ONE_DAY
        day += ONE_DAY


def _bounds(repeat: dict) -> tuple[dt.datetime, dt.datetime]:
    period = repeat.get("boundsPeriod") or {}
    lo = parse_instant(period["start"])[0] if period.get("start") else dt.datetime.min.replace(tzinfo=UTC)
    hi = parse_instant(period["end"])[1] if period.get("end") else LATEST
    return lo, hi


def resolve_slots(sr: Row, lo: dt.datetime, hi: dt.datetime) -> list[Slot]:
    """The slots of one ServiceRequest that overlap ``[lo, hi)`` (see the module docstring)."""
    body = jsonfast.loads(sr.body)
    timing = body.get("occurrenceTiming")
    if not isinstance(timing, dict):
        return [Slot(sr, "Adhoc", None, None, None)]
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    unit, period, frequency = repeat.get("periodUnit"), repeat.get("period", 1), repeat.get("frequency", 1)
    days = repeat.get("dayOfWeek")
    try:
        b_lo, b_hi = _bounds(repeat)
    except (ValueError, KeyError, TypeError):
        return [Slot(sr, "Unresolved", None, None, None)]
    if (period != 1 or not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1
            or unit not in ("d", "wk") or (days is not None and not isinstance(days, list))
            or any(d not in WEEKDAY for d in days or []) or (unit == "wk" and days)):
        return [Slot(sr, "Unresolved", None, None, None)]
    slots = []
    if unit == "d":
        wanted = {WEEKDAY[d] for d in days} if days else set(range(7))
        for start, end in _local_days(lo, hi):
            if start.weekday() in wanted and start < b_hi and end > b_lo:
                slots.append(Slot(sr, "Resolved", start, end, frequency))
    else:  # a number of times per ISO week, any days
        seen = set()
        for start, _ in _local_days(lo, hi):
            monday = start - start.weekday() * ONE_DAY
            if monday not in seen and monday < b_hi and monday + 7 * ONE_DAY > b_lo:
                seen.add(monday)
                slots.append(Slot(sr, "Resolved", monday, monday + 7 * ONE_DAY, frequency))
    return slots


def _activity(sr_body: dict) -> str:
    code = sr_body.get("code") or {}
    coding = (code.get("coding") or [{}])[0]
    return code.get("text") or coding.get("display") or coding.get("code") or "?"


def _row_parameter(self: Service, k: int, slot: Slot, care_plan_id: str) -> dict:
    parts: list[dict] = [
        {"name": "CarePlan", "valueReference": self.refs.ref("CarePlan", care_plan_id)},
        {"name": "ServiceRequest", "valueReference": self.refs.ref("ServiceRequest", slot.sr.id)},
        {"name": "ServiceRequestVersionId", "valueId": str(slot.sr.version)},
        {"name": "Activity", "valueString": _activity(jsonfast.loads(slot.sr.body))},
    ]
    if slot.start is not None and slot.end is not None:
        # FUT writes empty ResolvedTiming parts on Unresolved/Adhoc rows; a part without a value
        # breaks FHIR invariant inv-1, so the twin leaves them out.
        parts += [{"name": "ResolvedTimingStart", "valueDateTime": slot.start.isoformat()},
                  {"name": "ResolvedTimingEnd", "valueDateTime": (slot.end - dt.timedelta(seconds=1)).isoformat()}]
    if slot.submitted:
        parts.append({"name": "TotalSubmitted", "valueInteger": slot.submitted})
    parts.append({"name": "TimingType", "valueCodeableConcept": {"coding": [
        {"system": fr.RESOLVED_TIMING_TYPE_SYSTEM, "code": slot.timing_type, "display": slot.timing_type}]}})
    if slot.occurrences is not None:
        parts.append({"name": "OccurrencesRequested", "valueInteger": slot.occurrences})
    return {"name": f"item_{k}", "part": parts}


def _period(params: dict) -> tuple[dt.datetime, dt.datetime]:
    if "start" not in params or "end" not in params:
        raise bad_request(f"{CODE}START_AND_END_REQUIRED", f"{OPERATION} needs both start and end")
    try:
        start, end = parse_instant(params["start"][0]), parse_instant(params["end"][0])
    except ValueError as e:
        raise bad_request("REQUEST_INVALID_DATETIME", f"{OPERATION}: {e}") from None
    if end[0] < start[0]:
        raise bad_request(f"{CODE}END_BEFORE_START", f"{OPERATION}: end {params['end'][0]} lies before start "
                          f"{params['start'][0]}")
    if end[0] - start[0] > MAX_PERIOD:
        raise bad_request(f"{CODE}PERIOD_TOO_LONG", f"{OPERATION}: the period may span at most "
                          f"{MAX_PERIOD.days} days, got {(end[0] - start[0]).days} days")
    return start[0], end[1]


async def get_patient_procedures(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require(OPERATION)
    params = read_parameters(await read_json(request, self.settings), OPERATION, PROCEDURE_PARAMS,
                             unsupported=("conditionCodings", "_tag"))
    if "patient" not in params:
        raise bad_request(f"{CODE}PATIENT_NOT_SPECIFIED", f"{OPERATION} needs a patient")
    patient = reference_param(self, params["patient"][0], "Patient", "patient", "REQUEST_INVALID_REFERENCE")
    episodes = [reference_param(self, e, "EpisodeOfCare", "episodeOfCare", "REQUEST_INVALID_REFERENCE")
                for e in params.get("episodeOfCare", [])]
    lo, hi = _period(params)
    async with self.storage.transaction(one_write=True) as tx:
        scope = await access_scope(self, tx, claims, [patient], episodes)
        active = [*scope, Filter("status", "=", "active")]
        # One search per resource type, all on the patient index: active episodes → their active
        # CarePlans and ServiceRequests → the measurements of the slots' span.
        eoc = await tx.search("EpisodeOfCare", active, [("id", False)], limit=MAX_COUNT)
        in_eoc = Filter("episode", "in", [r.id for r in eoc])
        plans = await tx.search("CarePlan", [*active, in_eoc], [("id", False)], limit=MAX_COUNT)
        requests = await tx.search("ServiceRequest", [*active, in_eoc], [("id", False)], limit=MAX_COUNT)
        plan_of = {}
        for plan in plans:
            for activity in jsonfast.loads(plan.body).get("activity") or []:
                try:
                    type_, id_ = self.refs.parse(((activity or {}).get("reference") or {}).get("reference"))
                except ValueError:
                    continue
                if type_ == "ServiceRequest":
                    plan_of.setdefault(id_, plan.id)
        slots = [s for sr in requests if sr.id in plan_of for s in resolve_slots(sr, lo, hi)]
        if slots:
            await _count_submissions(tx, slots, [*scope, in_eoc], lo, hi)
        await self.audit(tx, claims, "E", OPERATION, [patient], "CarePlan")
    slots.sort(key=lambda s: (s.start is None, s.start or lo, s.sr.id))
    rows = [_row_parameter(self, k, s, plan_of[s.sr.id]) for k, s in enumerate(slots, 1)]
    used_plans = {plan_of[s.sr.id] for s in slots}
    used_requests = {s.sr.id for s in slots}
    entries = [{"fullUrl": self.refs.url("CarePlan", p.id), "resource": jsonfast.loads(p.body)}
               for p in plans if p.id in used_plans]
    entries += [{"fullUrl": self.refs.url("ServiceRequest", r.id), "resource": jsonfast.loads(r.body)}
                for r in requests if r.id in used_requests]
    result: dict = {"resourceType": "Parameters", "id": str(uuid.uuid4())}
    if rows:
        result["parameter"] = rows
    entries.append({"fullUrl": f"urn:uuid:{result['id']}", "resource": result})
    return fhir_response({"resourceType": "Bundle", "type": "collection", "entry": entries})


async def _count_submissions(tx, slots: list[Slot], scope: list[Filter], lo: dt.datetime, hi: dt.datetime) -> None:
    """``TotalSubmitted``: each slot's measurements (Observations and QuestionnaireResponses based
    on its ServiceRequest, ``effective`` inside the slot), from one search per type over the span
    of all slots. The SQL range is widened by a day on each side because a stored ``effective``
    that kept a non-UTC offset compares wrongly as text; the exact test is done on parsed times."""
    span_lo = min([lo] + [s.start for s in slots if s.start is not None])
    span_hi = max([hi] + [s.end for s in slots if s.end is not None])
    window = [Filter("effective", ">=", storage_instant(span_lo - ONE_DAY)),
              Filter("effective", "<", storage_instant(span_hi + ONE_DAY))]
    times: dict[str, list[dt.datetime]] = defaultdict(list)
    for type_ in ("Observation", "QuestionnaireResponse"):
        for row in await tx.search(type_, [*scope, *window], limit=MAX_MEASUREMENTS):
            t = parse_stored(row.effective)
            based_on = (jsonfast.loads(row.body).get("basedOn") or [{}])[0].get("reference") or ""
            if t is not None and "/ServiceRequest/" in based_on:
                times[based_on.rsplit("/", 1)[1]].append(t)
    for slot in slots:
        s_lo, s_hi = (slot.start, slot.end) if slot.start is not None else (lo, hi)
        slot.submitted = sum(1 for t in times.get(slot.sr.id, ()) if s_lo <= t < s_hi)


def routes(service: Service, guarded) -> list[Route]:
    return [Route("/careplan/EpisodeOfCare", guarded(functools.partial(search_episodes, service)), methods=["GET"]),
            Route(f"/careplan/{OPERATION}", guarded(functools.partial(get_patient_procedures, service)),
                  methods=["POST"])]
