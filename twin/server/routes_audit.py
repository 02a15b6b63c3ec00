"""The audit trail: ``GET /audit/AuditEvent`` — who touched which citizen's data, when, and how.

How FUT audits (reference/fut-infrastructure.md §7; IG ``ehealth-auditevent``)
------------------------------------------------------------------------------
Every request to a FUT service produces FHIR ``AuditEvent``s, sent through an ActiveMQ topic to a
central consumer that stores them (Splunk) and forwards them to the national **MinLog**, where a
citizen can see who looked at their data. The rules the twin reproduces:

* **one AuditEvent per patient whose data was touched** — a worklist search over 30 patients is 30
  events, linked by the request's trace id (``x-b3-traceid``);
* ``type`` is ``rest``; ``subtype`` the RESTful interaction (``read``, ``search-type``, ``create``,
  …) or the custom operation (``$submit-measurement``);
* ``action`` is C (create), R (read or search), U (update or patch), D (delete) or E (execute an
  operation, named in the subtype);
* the agent is the user of the token, with the **organisation from the token** as requestor;
* ``entity``: the patient (role 1), the resource or resource type touched (role 4, with the search
  parameters in ``entity.query``, base64, **CPR numbers masked**), the trace id (role 21);
* SYSTEM users, HEAD requests and failed or refused requests are not audited.

What the twin does
------------------
Routes write one compact row per patient touched into the ``audit`` table, in the request's own
transaction (:meth:`twin.server.service.Service.audit`): no queue, and an audit row exists exactly
when the request's data change committed. This module turns those rows into AuditEvents when the
national auditor reads them (role ``auditor``, permission ``AuditEvent.search``; anyone else gets
403). User-management changes (``routes_organization``) write rows without a patient; a search
without ``patient`` finds them.

Search parameters: ``patient`` (``Patient/{id}``, an absolute URL, or an id), ``date`` (repeatable,
with a prefix ``eq`` ``ge`` ``gt`` ``le`` ``lt``; a day or a date-time), ``action`` (comma list of
C R U D E), ``_sort`` (``date``, the default, or ``-date``), ``_count``, ``_offset``. The twin's own
choices, where the IG's profile is not in the reference: the requestor organisation is an agent
extension ``urn:fut-twin:StructureDefinition:auditevent-requestor-organization``, the trace id an
identifier of system ``urn:fut-twin:trace-id``, and an operation's name a second subtype coding of
system ``urn:fut-twin:operation``. The events have ids (stable: derived from trace id and patient)
but no read endpoint; their ``fullUrl`` is ``urn:uuid:{id}``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth
from twin.server import fhir as fr
from twin.server.errors import bad_request
from twin.server.service import SERVICE_OF, Service, fhir_response, page_count, page_offset, page_url

PROFILE = fr.SD + "ehealth-auditevent"  # IG intro-notes/StructureDefinition-ehealth-auditevent-intro.md
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"  # FHIR R4 core
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"  # FHIR R4 core
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"  # FHIR R4 core
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"  # FHIR R4 core
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"  # FHIR R4 core
EXT_REQUESTOR_ORGANIZATION = "urn:fut-twin:StructureDefinition:auditevent-requestor-organization"  # twin's own
OPERATION_SYSTEM = "urn:fut-twin:operation"  # twin's own
TRACE_SYSTEM = "urn:fut-twin:trace-id"  # twin's own; FUT's is the x-b3-traceid header value
USER_TYPE_SYSTEM = "urn:fut-twin:user-type"  # twin's own: PATIENT / PRACTITIONER / SYSTEM, as the token
_EVENT_NAMESPACE = uuid.UUID("0b7e3c1a-2d4f-5a6b-8c9d-e1f2a3b4c5d6")  # twin's own uuid5 namespace

ACTIONS = ("C", "R", "U", "D", "E")
INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history", "history-instance", "history-type",
                "history-system", "create", "search", "search-type", "search-system", "capabilities", "transaction",
                "batch", "operation")  # FHIR R4 restful-interaction
_DEFAULT_INTERACTION = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "operation"}

# A CPR number: six digits of birth date, four more, with or without a dash (possibly URL-encoded),
# not inside a longer run of digits.
CPR = re.compile(r"(?<!\d)\d{6}(?:-|%2[dD])?\d{4}(?!\d)")
CPR_MASK = "xxxxxx-xxxx"


def mask_cpr(text: str) -> str:
    """``text`` with every CPR-like number replaced by ``xxxxxx-xxxx`` (FUT masks them in audit queries)."""
    return CPR.sub(CPR_MASK, text)


# -- search parameters ----------------------------------------------------------------------------

_DATE = re.compile(r"(eq|ge|gt|le|lt)?(\d{4}-\d{2}-\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?")


def _utc(moment: dt.datetime) -> str:
    """The audit table's text form (``now_iso``): UTC, milliseconds; compares as text in time order."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def date_condition(value: str) -> tuple[str, list[str]]:
    """SQL on ``at`` for one ``date`` parameter.

    The value names an interval — a whole day, or a date-time to the millisecond (a time without a
    zone is Danish standard time, as everywhere in the twin) — and the prefix compares with it as
    FHIR search does: ``ge`` from its start, ``gt`` after its end, ``le`` up to its end, ``lt``
    before its start, ``eq`` (the default) within it."""
    m = _DATE.fullmatch(value.replace(" ", "+"))  # an unencoded "+01:00" arrives as " 01:00"
    if m is None:
        raise bad_request("SEARCH_INVALID_DATE", f"date={value!r}: use [eq|ge|gt|le|lt]YYYY-MM-DD[Thh:mm[:ss[.sss]]"
                                                 "[Z|±hh:mm]]")
    prefix, day, time = m.group(1) or "eq", m.group(2), m.group(3)
    try:
        if time:
            start = dt.datetime.fromisoformat(day + time.replace("Z", "+00:00"))
            if start.tzinfo is None:
                start = start.replace(tzinfo=fr.TWIN_TZ)
            end = start + dt.timedelta(milliseconds=1)
        else:
            start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), fr.TWIN_TZ)
            end = start + dt.timedelta(days=1)
        lo, hi = _utc(start), _utc(end)
    except (ValueError, OverflowError):
        raise bad_request("SEARCH_INVALID_DATE", f"date={value!r} is not a valid date or date-time") from None
    return {"ge": ("at >= ?", [lo]), "gt": ("at >= ?", [hi]), "le": ("at < ?", [hi]), "lt": ("at < ?", [lo]),
            "eq": ("at >= ? AND at < ?", [lo, hi])}[prefix]


# -- building AuditEvents -------------------------------------------------------------------------

def _coding(system: str, code: str, display: str | None = None) -> dict:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _url_or_none(refs: fr.Refs, type_: str | None, id_: str | None) -> str | None:
    try:
        return refs.url(type_, id_) if type_ and id_ else None
    except ValueError:  # a type the twin serves no URL for (Bundle), or not an id
        return None


def audit_event(refs: fr.Refs, row: tuple) -> dict:
    """The FHIR R4 AuditEvent of one audit row (``storage.AUDIT_COLUMNS`` order)."""
    at, trace, user_type, user_id, org, action, subtype, patient, resource_type, resource_id, query = row
    if subtype and subtype.startswith("$"):
        subtypes = [_coding(RESTFUL_INTERACTION, "operation"), _coding(OPERATION_SYSTEM, subtype)]
    elif subtype in INTERACTIONS:
        subtypes = [_coding(RESTFUL_INTERACTION, "search-type" if subtype == "search" else subtype)]
    else:
        subtypes = [_coding(RESTFUL_INTERACTION, _DEFAULT_INTERACTION.get(action, "operation"))]

    user_url = _url_or_none(refs, auth.USER_RESOURCE.get(user_type), user_id)
    agent: dict = {"type": {"coding": [_coding(USER_TYPE_SYSTEM, user_type)]},
                   "who": {"reference": user_url} if user_url else {"identifier": {"value": user_id}},
                   "requestor": True}
    org_url = _url_or_none(refs, "Organization", org)
    if org_url:
        agent["extension"] = [{"url": EXT_REQUESTOR_ORGANIZATION, "valueReference": {"reference": org_url}}]

    entities = []
    patient_url = _url_or_none(refs, "Patient", patient)
    if patient_url:
        entities.append({"what": {"reference": patient_url}, "type": _coding(ENTITY_TYPE, "1", "Person"),
                         "role": _coding(OBJECT_ROLE, "1", "Patient")})
    if resource_type:
        url = _url_or_none(refs, resource_type, resource_id)
        what = ({"reference": url} if url else {"reference": f"{resource_type}/{resource_id}"} if resource_id
                else {"type": resource_type})
        entity: dict = {"what": what, "type": _coding(ENTITY_TYPE, "2", "System Object"),
                        "role": _coding(OBJECT_ROLE, "4", "Domain Resource")}
        if query:
            entity["query"] = base64.b64encode(mask_cpr(query).encode()).decode("ascii")
        entities.append(entity)
    entities.append({"what": {"identifier": {"system": TRACE_SYSTEM, "value": trace}},
                     "type": _coding(ENTITY_TYPE, "4", "Other"), "role": _coding(OBJECT_ROLE, "21", "Job Stream")})

    # the service that wrote the row: a submission's rows name the Bundle, which no service stores
    service = "measurement" if resource_type == "Bundle" else SERVICE_OF.get(resource_type or "", "twin")
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid5(_EVENT_NAMESPACE, f"{trace}|{patient or ''}")),
        "meta": {"profile": [PROFILE]},
        "type": _coding(AUDIT_EVENT_TYPE, "rest", "RESTful Operation"),
        "subtype": subtypes,
        "action": action if action in ACTIONS else "E",
        "recorded": at,
        "outcome": "0",  # refused requests write no row: every recorded one succeeded
        "agent": [agent],
        "source": {"site": service, "observer": {"display": f"FUT twin, {service} service"},
                   "type": [_coding(SOURCE_TYPE, "4", "Application Server")]},
        "entity": entities,
    }


# -- the search -----------------------------------------------------------------------------------

_COLUMNS = ("r.at, r.trace_id, r.user_type, r.user_id, r.org, r.action, r.subtype, {patient}, r.resource_type, "
            "r.resource_id, r.query")
# An audit event is a request joined with one patient it touched (or with none: user management).
# With a patient, the search starts from that patient's keys (``{by_patient}``: the storage's
# (patient, at, request) keys in patient order); without, from the requests, each joined with its
# patients (``{requests_with_patients}``, the patient's column ``{request_patient}``). See
# Storage.fetch_audit; on SQLite the keys are kept differently (twin.server.audit_index).
_FROM_PATIENT = " FROM {by_patient} p JOIN audit_request r ON r.id = p.request"
_FROM_REQUESTS = " FROM {requests_with_patients}"


async def search_audit_events(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    q = request.query_params
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)
        claims.require("AuditEvent.search")
        where: list[str] = []
        params: list = []
        patient = self.ref_id(q.get("patient"), "Patient", "patient")
        at = "p.at" if patient is not None else "r.at"  # the same time; p.at is in the patient key
        if patient is not None:
            where.append("p.patient = ?")
            params.append(patient)
        for value in q.getlist("date"):
            sql, values = date_condition(value)
            where.append(sql.replace("at ", f"{at} "))
            params += values
        if q.get("action") is not None:
            actions = q["action"].split(",")
            if not actions or not set(actions) <= set(ACTIONS):
                raise bad_request("SEARCH_INVALID_CODE", f"action={q['action']!r}: use a comma list of "
                                                         f"{', '.join(ACTIONS)}")
            where.append(f"r.action IN ({', '.join('?' for _ in set(actions))})")
            params += sorted(set(actions))
        sort = q.get("_sort", "date")
        if sort not in ("date", "-date"):
            raise bad_request("SEARCH_INVALID_SORT", f"_sort={sort!r}: use date or -date")
        direction = "DESC" if sort == "-date" else "ASC"
        count, offset = page_count(q), page_offset(q)
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        source = _FROM_PATIENT if patient is not None else _FROM_REQUESTS
        patient_column = "p.patient" if patient is not None else "{request_patient}"
    total = int((await self.storage.fetch_audit(f"SELECT COUNT(*){source}{sql_where}", params))[0][0])
    rows = await self.storage.fetch_audit(f"SELECT {_COLUMNS.format(patient=patient_column)}{source}{sql_where} "
                                          f"ORDER BY {at} {direction}, r.trace_id {direction}, "
                                          f"COALESCE({patient_column}, '') {direction} LIMIT ? OFFSET ?",
                                          [*params, count, offset])
    # Reading the audit trail writes no audit rows per patient. Audit rows are not patient data,
    # and an audit of audit reads would grow the table it reads with every search (a search over
    # N patients adds N rows), and show in each citizen's MinLog as if the auditor had opened
    # their health record.
    entries = []
    for row in rows:
        event = audit_event(self.refs, row)
        entries.append({"fullUrl": f"urn:uuid:{event['id']}", "resource": event, "mode": "match"})
    next_url = page_url(request, offset + len(rows)) if offset + len(rows) < total else None
    return fhir_response(fr.bundle_searchset(entries, total, str(request.url), next_url))


def routes(service: Service, guarded) -> list[Route]:
    return [Route("/audit/AuditEvent", guarded(functools.partial(search_audit_events, service)), methods=["GET"])]
