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

This module also holds the helpers the measurement service shares (:func:`read_parameters`,
:func:`parse_instant`, :func:`storage_instant`, :func:`access_scope`): the token-context rules of
searches are the same on both services because both are keyed by the episode of care.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth, jsonfast
from twin.server import fhir_resources as fr
from twin.server.errors import FhirError, bad_request
from twin.server.service import MAX_COUNT, Service, fhir_response, page_count, read_json
from twin.server.storage import Filter, Row

UTC = dt.UTC
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# ------------------------------------------------------------------------------ shared helpers
def forbidden_search(what: str) -> FhirError:
    return FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                     f"Search parameters not matching security token context: {what}", "forbidden")


_INSTANT = re.compile(r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
                      r"(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?", re.ASCII)
_LATEST = dt.datetime.max.replace(tzinfo=UTC)


def parse_instant(text: object) -> tuple[dt.datetime, dt.datetime]:
    """The UTC range ``[lo, hi)`` a FHIR date/dateTime denotes at its precision (FHIR search: a
    value is the whole interval it names, ``2025-03-03`` the whole day). A value without a zone is
    Danish standard time, as everywhere in the twin. ValueError when it is not a FHIR date.

    A space stands for ``+``: an unescaped ``+01:00`` in a URL arrives decoded as `` 01:00``.
    """
    if not isinstance(text, str):
        raise ValueError("not a string")
    m = _INSTANT.fullmatch(text.strip().replace(" ", "+"))
    if not m:
        raise ValueError(f"{text!r} is not a FHIR date or dateTime")
    tz: dt.tzinfo = fr.TWIN_TZ
    if m["tz"] == "Z":
        tz = UTC
    elif m["tz"]:
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
        if hours > 14 or minutes >= 60:
            raise ValueError(f"{text!r}: time zone offset out of range")
        sign = -1 if m["tz"][0] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    fraction = m["f"] or ""
    lo = dt.datetime(int(m["y"]), int(m["m"] or 1), int(m["d"] or 1), int(m["H"] or 0), int(m["M"] or 0),
                     int(m["S"] or 0), int((fraction + "000000")[:6]), tzinfo=tz)
    try:
        if m["m"] is None:
            hi = lo.replace(year=lo.year + 1)
        elif m["d"] is None:
            hi = lo.replace(year=lo.year + 1, month=1) if lo.month == 12 else lo.replace(month=lo.month + 1)
        else:
            step = (dt.timedelta(days=1) if m["H"] is None else dt.timedelta(minutes=1) if m["S"] is None
                    else dt.timedelta(seconds=1) if not fraction
                    else dt.timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction), 6)))))
            hi = lo + step
        hi = hi.astimezone(UTC)
    except (ValueError, OverflowError):
        hi = _LATEST  # the interval runs to the end of year 9999
    try:
        return lo.astimezone(UTC), hi
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def storage_instant(t: dt.datetime) -> str:
    """``t`` as the stored ``effective`` column writes UTC instants, so that SQL compares strings
    in time order: ``2025-03-03T08:00:00+00:00``, with ``.mmm`` only when there is a fraction.

    Seconds-only and millisecond forms interleave correctly (``'+' < '.'``: ``…:00+00:00`` sorts
    before ``…:00.5+00:00``); a value stored with another offset or ``Z`` does not, so the column
    is only searchable by text when :func:`twin.server.submission.store_rows` writes it in UTC."""
    t = t.astimezone(UTC)
    return t.isoformat(timespec="milliseconds" if t.microsecond else "seconds")


def parse_stored(text: str | None) -> dt.datetime | None:
    """A stored ``effective`` value as an aware datetime (None when absent or unreadable)."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=fr.TWIN_TZ)


ParamSpec = Mapping[str, tuple[tuple[str, ...], bool]]
"""Operation parameter name → (accepted ``value[x]`` keys, may repeat)."""


def read_parameters(body: object, operation: str, spec: ParamSpec,
                    unsupported: Sequence[str] = ()) -> dict[str, list]:
    """The values of an operation's ``Parameters`` body, by name: strict, as FHIR servers are with
    operation input — an unknown name, a wrong ``value[x]`` type or a repeated single parameter is
    a 400 naming it, never silently ignored."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", f"{operation} expects a Parameters resource")
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise bad_request("REQUEST_INVALID_PARAMETERS", "Parameters.parameter must be a list")
    out: dict[str, list] = {}
    for k, p in enumerate(params):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise bad_request("REQUEST_INVALID_PARAMETERS", f"Parameters.parameter[{k}] has no name")
        name = p["name"]
        if name in unsupported:
            raise bad_request("REQUEST_UNSUPPORTED_PARAMETER", f"{operation}: parameter {name!r} is part of FUT's "
                              "operation but not modelled by the twin")
        if name not in spec:
            raise bad_request("REQUEST_UNKNOWN_PARAMETER", f"{operation} has no parameter {name!r}; known: "
                              f"{', '.join(sorted(spec))}")
        types, repeats = spec[name]
        values = [(key, value) for key, value in p.items() if key.startswith("value")]
        if len(values) != 1 or values[0][0] not in types:
            raise bad_request("REQUEST_INVALID_PARAMETER_TYPE",
                              f"{operation}: parameter {name!r} needs exactly one of {', '.join(types)}")
        if name in out and not repeats:
            raise bad_request("REQUEST_REPEATED_PARAMETER", f"{operation}: parameter {name!r} may appear only once")
        out.setdefault(name, []).append(values[0][1])
    return out


def reference_param(self: Service, value: object, expected_type: str, param: str, code: str) -> str:
    """The id of a ``valueReference`` operation parameter; 400 ``code`` when it is not a reference
    to a resource of ``expected_type`` on this server (FUT: ``…_UNSUPPORTED_REFERENCE``)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    try:
        type_, id_ = self.refs.parse(ref)
    except ValueError:
        raise bad_request(code, f"{param}: expected a reference to a {expected_type}, got {ref!r}") from None
    if type_ != expected_type:
        raise bad_request(code, f"Unsupported resource reference, expected {expected_type} but was {type_}")
    return id_


def reference_id(self: Service, value: str | None, expected_type: str, param: str) -> str | None:
    """The id in a reference *search* parameter (``Type/id``, an absolute URL or a bare id)."""
    id_ = self.ref_id(value, expected_type, param)
    if id_ is not None and not FHIR_ID.fullmatch(id_):
        raise bad_request("SEARCH_INVALID_REFERENCE", f"{param}={value!r} is not a reference to a {expected_type}")
    return id_


async def access_scope(self: Service, tx, claims: auth.Claims, patient_ids: Sequence[str],
                       episode_ids: Sequence[str]) -> list[Filter]:
    """Filters that keep a search of patient data inside the token's context, after checking that
    the named patients and episodes lie inside it (else 403
    ``SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT``, also for an episode that does not exist,
    so a search is no oracle of what exists).

    * A citizen may name only their own patient, and only their own episodes (the token's episode
      when it carries one); every result row is also filtered on their patient.
    * A practitioner needs a care team in the token (403 ``SECURITY_TOKEN_CONTEXT_MISSING``); a named
      episode must be followed by that team (the EpisodeOfCare row's ``team``), a named patient must
      have at least one such episode, and rows are limited to the team's episodes — the episode's
      *current* team decides, so a team that takes a patient over sees the earlier measurements.
      A patient or episode the token is scoped to must match too.
    * SYSTEM users are not limited.

    The filters apply to any row type in the patient compartments (``patient``/``episode``
    columns): EpisodeOfCare, CarePlan, ServiceRequest, Observation, QuestionnaireResponse, Provenance.
    """
    ctx = claims.context
    filters = [Filter("patient", "=", p) for p in patient_ids]
    if episode_ids:  # several episodes: any of them
        filters.append(Filter("episode", "in", sorted(set(episode_ids))))
    if claims.user_type == "PATIENT":
        claims.require_context("Patient")
        if any(p != ctx.patient_id for p in patient_ids):
            raise forbidden_search("patient")
        for e in episode_ids:
            if ctx.episode_of_care_id is not None:
                if e != ctx.episode_of_care_id:
                    raise forbidden_search("episodeOfCare")
            else:
                row = await tx.get("EpisodeOfCare", e)
                if row is None or row.patient != ctx.patient_id:
                    raise forbidden_search("episodeOfCare")
        return [*filters, Filter("patient", "=", ctx.patient_id)]
    if claims.user_type != "PRACTITIONER":
        return filters
    (team,) = claims.require_context("CareTeam")
    await self.require_membership(tx, claims)  # a team membership withdrawn since the token was issued ends access now
    if ctx.patient_id is not None and any(p != ctx.patient_id for p in patient_ids):
        raise forbidden_search("patient")
    if ctx.episode_of_care_id is not None and any(e != ctx.episode_of_care_id for e in episode_ids):
        raise forbidden_search("episodeOfCare")
    for e in episode_ids:
        row = await tx.get("EpisodeOfCare", e)
        if row is None or row.team != team:
            raise forbidden_search("episodeOfCare")
    allowed: set[str] | None = None
    for p in patient_ids:
        rows = await tx.search("EpisodeOfCare", [Filter("patient", "=", p), Filter("team", "=", team)],
                               [("id", False)], limit=MAX_COUNT)
        if not rows:
            raise forbidden_search("patient")
        ids = {r.id for r in rows}
        allowed = ids if allowed is None else allowed & ids
    if allowed is not None:
        filters.append(Filter("episode", "in", sorted(allowed)))
    if ctx.patient_id is not None:
        filters.append(Filter("patient", "=", ctx.patient_id))
    if ctx.episode_of_care_id is not None:
        filters.append(Filter("episode", "=", ctx.episode_of_care_id))
    return filters


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
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)
        rows = await tx.search("EpisodeOfCare", filters, [("id", False)], limit=page_count(q))
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "EpisodeOfCare", query=str(q))
    entries = [{"fullUrl": self.refs.url("EpisodeOfCare", r.id), "resource": jsonfast.loads(r.body), "mode": "match"}
               for r in rows]
    return fhir_response(fr.bundle_searchset(entries, None, str(request.url)))


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
    hi = parse_instant(period["end"])[1] if period.get("end") else _LATEST
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
    async with self.storage.transaction() as tx:
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
