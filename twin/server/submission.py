"""``$submit-measurement``: validate a citizen's whole submission, then store it in one transaction.

A submission is a ``Parameters`` resource whose ``measurement`` parameter is a ``transaction``
Bundle of Observations and a QuestionnaireResponse (reference/fut-infrastructure.md §4). Everything
is checked before anything is written: the bundle's shape, every resource's profile essentials,
that all resources are for the same patient and episode of care — the ones in the token — that
each Observation is based on an active ServiceRequest of that episode with the same code, and that
values, units and times are possible. Then, in one database transaction: the resources (server ids,
references rewritten from ``urn:uuid:`` to absolute URLs), the implicit Provenance linking them, the
outbox row that makes the triage happen, and the audit row.

Resubmitting the same submission (same entry identifiers, e.g. a retry after a lost answer) stores
nothing new: the answer says it already exists and gives the original locations. The submission is
keyed once, by its Provenance (:func:`submission_key`, unique in the database), whose ``target``
references also carry the client's identifier of each entry — so the resubmission's answer and its
conflict check read one row; the Observations themselves keep the identifiers in their bodies only
(six random index keys per submission cost half of its COMMIT).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

from twin.rules import MEASUREMENTS, ReferenceRanges
from twin.server import fhir as fr
from twin.server import jsonfast
from twin.server.errors import FhirError, bad_request, unprocessable
from twin.server.storage import Filter, Lookup, Row, Tx, new_id

MAX_ENTRIES = 100  # FUT transaction limit (fut-examples/transaction.md)
ALLOWED_TYPES = {"Observation", "QuestionnaireResponse"}
EPISODE_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"
# Physically possible home readings; outside them a reading is a device or typing error, not a patient.
POSSIBLE = {"spo2": (50.0, 100.0), "pulse": (20.0, 300.0), "weight": (1.0, 500.0), "sbp": (40.0, 300.0),
            "dbp": (20.0, 200.0)}
BY_CODE = {(m.system, m.code): m for m in MEASUREMENTS.values()}
MAX_FUTURE = dt.timedelta(hours=1)  # clock skew of a citizen's tablet
CODE = "MEASUREMENT_SUBMITMEASUREMENT_"


class RequestFacts(NamedTuple):
    """What validating a submission needs of a ServiceRequest (its body only for new thresholds)."""

    id: str
    version: int
    episode: str | None
    status: str | None
    code: str | None


class EpisodeFacts(NamedTuple):
    """What validating a submission needs of its EpisodeOfCare."""

    id: str
    patient: str | None
    status: str | None
    team: str | None
    org: str | None


class Targets(NamedTuple):
    """Whom and what a submission is for, as its references say (checked against the token)."""

    patient_id: str
    episode_id: str
    request_ids: list[str]  # each entry's ServiceRequest (basedOn), in entry order


@dataclass
class Stored:
    """What the database holds of a submission's targets, read in one statement (:func:`read_stored`)."""

    provenance_id: str | None  # set when this submission was stored before (its key is taken)
    episode: EpisodeFacts | None
    requests: dict[str, RequestFacts]


@dataclass
class Plan:
    """A validated submission, ready to store."""

    patient_id: str
    episode_id: str
    team_id: str | None
    org_id: str | None
    entries: list[dict]  # the bundle entries, resources as submitted
    idents: list[str]
    service_requests: dict[str, RequestFacts] = field(default_factory=dict)
    measured: set[str] = field(default_factory=set)  # ids of the ServiceRequests the Observations answer
    ranges: dict[str, ReferenceRanges] = field(default_factory=dict)  # by ServiceRequest id


def _ref_id(refs, reference: str | None, expected_type: str, what: str) -> str:
    if not reference:
        raise bad_request(f"{CODE}INPUT_SHOULD_REFERENCE_{expected_type.upper()}", f"{what} has no {expected_type} reference")
    try:
        type_, id_ = refs.parse(reference)
    except ValueError:
        raise bad_request("REQUEST_INVALID_REFERENCE", f"{what}: {reference!r} is not a reference to a {expected_type}") from None
    if type_ != expected_type:
        raise bad_request("REQUEST_INVALID_REFERENCE", f"{what}: {reference!r} must reference a {expected_type}")
    return id_


def _reference(value) -> str | None:
    """``value.reference`` if ``value`` is a Reference object; None for anything else (a client's
    string or list where an object belongs then fails as a missing reference, never as a 500)."""
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


def _first(value):
    return value[0] if isinstance(value, list) and value else None


def _episode_ref(resource: dict) -> str | None:
    extensions = resource.get("extension")
    for ext in extensions if isinstance(extensions, list) else []:
        if isinstance(ext, dict) and ext.get("url") == EPISODE_EXT:
            return _reference(ext.get("valueReference"))
    return None


def _parse_time(value, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise bad_request("REQUEST_INVALID_DATETIME", f"{what}: a dateTime is required")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request("REQUEST_INVALID_DATETIME", f"{what}: {value!r} is not a FHIR dateTime") from None
    if t.tzinfo is None:
        raise bad_request("REQUEST_INVALID_DATETIME", f"{what}: {value!r} needs a time zone")
    if t > dt.datetime.now(dt.UTC) + MAX_FUTURE:
        raise unprocessable(f"{CODE}EFFECTIVE_IN_FUTURE", f"{what}: {value} lies in the future")
    return t


def parse_submission(body: object, refs) -> tuple[list[dict], list[str]]:
    """Shape checks that need no database: returns the entries and their identifiers."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", "$submit-measurement expects a Parameters resource")
    given = body.get("parameter") or []
    if not isinstance(given, list):
        raise bad_request(f"{CODE}MISSING_MEASUREMENT_PARAMETER", "Parameters.parameter must be a list")
    params = [p for p in given if isinstance(p, dict) and p.get("name") == "measurement"]
    if len(params) != 1:
        raise bad_request(f"{CODE}MISSING_MEASUREMENT_PARAMETER", "Parameters needs exactly one 'measurement' parameter")
    bundle = params[0].get("resource")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise bad_request(f"{CODE}INVALID_BUNDLE", "the 'measurement' parameter must hold a Bundle of type transaction")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise bad_request(f"{CODE}EMPTY_INPUT_BUNDLE", "The input bundle does not contain any resources.")
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, "TRANSACTION_TOO_MANY_ENTRIES",
                        f"a transaction may hold at most {MAX_ENTRIES} entries, this one has {len(entries)}", "too-costly")
    seen, idents = set(), []
    for k, e in enumerate(entries):
        where = f"Bundle.entry[{k}]"
        if not isinstance(e, dict) or not isinstance(e.get("resource"), dict):
            raise bad_request(f"{CODE}INVALID_BUNDLE", f"{where} has no resource")
        r = e["resource"]
        if r.get("resourceType") not in ALLOWED_TYPES:
            raise bad_request(f"{CODE}INPUT_BUNDLE_CONTAINS_INVALID_RESOURCES",
                              f"{where}: {r.get('resourceType')!r} is not allowed; submit Observation or QuestionnaireResponse")
        full_url = e.get("fullUrl")
        if not isinstance(full_url, str) or not full_url.startswith("urn:uuid:"):
            raise bad_request(f"{CODE}INVALID_FULLURL", f"{where}.fullUrl must be a urn:uuid:")
        try:
            uuid.UUID(full_url.removeprefix("urn:uuid:"))
        except ValueError:
            raise bad_request(f"{CODE}INVALID_FULLURL", f"{where}.fullUrl {full_url!r} is not a urn:uuid") from None
        if full_url in seen:
            raise bad_request(f"{CODE}DUPLICATE_FULLURL", f"{where}.fullUrl {full_url} appears twice")
        seen.add(full_url)
        request = e.get("request") or {}
        if not isinstance(request, dict) or request.get("method") != "POST" or request.get("url") != r["resourceType"]:
            raise bad_request(f"{CODE}INVALID_REQUEST", f"{where}.request must be POST {r['resourceType']}")
        idents.append(full_url)
    return entries, idents


def submission_targets(entries: list[dict], claims, refs) -> Targets:
    """The patient, episode and ServiceRequests the entries reference: one patient and one episode
    for all, and a citizen may submit only for the patient and episode in the token."""
    patients, episodes = set(), set()
    for k, e in enumerate(entries):
        r, where = e["resource"], f"Bundle.entry[{k}].resource"
        patients.add(_ref_id(refs, _reference(r.get("subject")), "Patient", where))
        episodes.add(_ref_id(refs, _episode_ref(r), "EpisodeOfCare", where))
    if len(patients) > 1:
        raise unprocessable(f"{CODE}INPUT_FOR_DIFFERENT_PATIENTS", "The resources provided are for different patients.")
    if len(episodes) > 1:
        raise unprocessable(f"{CODE}INPUT_NOT_PART_OF_SAME_EPISODEOFCARE",
                            "The resources provided are not all part of the same episode of care.")
    patient_id, episode_id = patients.pop(), episodes.pop()
    ctx = claims.context
    if claims.user_type == "PATIENT" and (ctx.patient_id != patient_id or ctx.episode_of_care_id != episode_id):
        raise FhirError(403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
                        f"Resource not matching security token context: Patient/{patient_id}, EpisodeOfCare/{episode_id}",
                        "forbidden")
    request_ids = [_ref_id(refs, _reference(_first(e["resource"].get("basedOn"))), "ServiceRequest",
                           f"Bundle.entry[{k}].resource") for k, e in enumerate(entries)]
    return Targets(patient_id, episode_id, request_ids)


FACT_COLUMNS = ("id", "version", "patient", "episode", "team", "org", "status", "code")
_EPISODE_AT = [FACT_COLUMNS.index(c) for c in EpisodeFacts._fields]
_REQUEST_AT = [FACT_COLUMNS.index(c) for c in RequestFacts._fields]


async def read_stored(tx: Tx, targets: Targets, key: str) -> Stored:
    """Whether the submission keyed ``key`` was stored before, its episode and its ServiceRequests:
    one statement (on PostgreSQL, with the write, all of a submission's round trips but one)."""
    wanted = sorted(set(targets.request_ids))
    provenance, episode, requests = await tx.lookup(FACT_COLUMNS, [
        Lookup("Provenance", "ident", [key]), Lookup("EpisodeOfCare", "id", [targets.episode_id]),
        Lookup("ServiceRequest", "id", wanted)])
    return Stored(provenance[0][0] if provenance else None,
                  EpisodeFacts(*(episode[0][i] for i in _EPISODE_AT)) if episode else None,
                  {r[0]: RequestFacts(*(r[i] for i in _REQUEST_AT)) for r in requests})


def check_submission(entries: list[dict], idents: list[str], targets: Targets, stored: Stored, refs) -> Plan:
    """Everything checked against the stored episode and ServiceRequests: the episode is the
    patient's and active; each entry's ServiceRequest belongs to it, is active and has the
    Observation's code; values, units and times are possible."""
    episode_id = targets.episode_id
    episode = stored.episode
    if episode is None:
        raise unprocessable("REQUEST_UNKNOWN_REFERENCE", f"EpisodeOfCare/{episode_id} is not known")
    if episode.patient != targets.patient_id:
        raise unprocessable(f"{CODE}DIFFERENT_PATIENT_REFERENCE",
                            "The patient referenced by the EpisodeOfCare is different than the patient referenced by the "
                            "provided resources")
    if episode.status != "active":
        raise unprocessable(f"{CODE}EPISODEOFCARE_NOT_ACTIVE", f"EpisodeOfCare/{episode_id} is {episode.status}, not active")
    plan = Plan(targets.patient_id, episode_id, episode.team, episode.org, entries, idents)
    for k, (e, sr_id) in enumerate(zip(entries, targets.request_ids, strict=True)):
        r, where = e["resource"], f"Bundle.entry[{k}].resource"
        sr = stored.requests.get(sr_id)
        if sr is None or sr.episode != episode_id:
            raise unprocessable("REQUEST_UNKNOWN_REFERENCE", f"{where}.basedOn: ServiceRequest/{sr_id} is not part of "
                                f"EpisodeOfCare/{episode_id}")
        if sr.status != "active":
            raise unprocessable(f"{CODE}PROCEDURE_REQUEST_IS_NOT_ACTIVE", f"Procedure request with id:[{sr_id}] is not active.")
        plan.service_requests[sr_id] = sr
        if r["resourceType"] == "Observation":
            _check_observation(r, sr, sr_id, where)
            plan.measured.add(sr_id)
        else:
            _check_questionnaire_response(r, where, refs)
    return plan


async def load_ranges(plan: Plan, tx: Tx) -> None:
    """The thresholds of the ServiceRequests the Observations answer: parsed once per (id, version),
    the bodies read only for those not parsed yet (a citizen's requests change only when a
    clinician adjusts them)."""
    unparsed = []
    for sr in (plan.service_requests[i] for i in sorted(plan.measured)):
        found = _RANGES.get((sr.id, sr.version))
        if found is None:
            unparsed.append(sr.id)
        else:
            plan.ranges[sr.id] = found
    if unparsed:
        for row in await tx.search("ServiceRequest", [Filter("id", "in", unparsed)], limit=len(unparsed)):
            plan.ranges[row.id] = _ranges(row.id, row.version, row.body)


def _check_observation(r: dict, sr: RequestFacts, sr_id: str, where: str) -> None:
    if r.get("status") != "final":
        raise unprocessable(f"{CODE}INVALID_STATUS", f"Measurement status {r.get('status')} is invalid. Status must be "
                            "final for measurement of type Observation")
    code = r.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    coding = codings[0] if isinstance(codings, list) and codings and isinstance(codings[0], dict) else {}
    measurement = BY_CODE.get((coding.get("system"), coding.get("code")))
    if measurement is None or sr.code != coding.get("code"):
        raise unprocessable(f"{CODE}INVALID_OBSERVATION_CODE",
                            f"Observation.code does not match the code of the referenced ServiceRequest with id {sr_id}.")
    q = r.get("valueQuantity")
    if not isinstance(q, dict):
        raise bad_request(f"{CODE}MISSING_VALUE", f"{where}: valueQuantity is required")
    value = q.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise bad_request(f"{CODE}INVALID_VALUE", f"{where}.valueQuantity.value must be a number, got {value!r}")
    if q.get("system") != "http://unitsofmeasure.org" or q.get("code") != measurement.unit_ucum:
        raise unprocessable(f"{CODE}INVALID_UNIT", f"{where}: {measurement.name} is measured in UCUM "
                            f"'{measurement.unit_ucum}', got {q.get('system')}|{q.get('code')}")
    lo, hi = POSSIBLE[measurement.name]
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits: JSON allows it, no device sends it
        number = math.inf
    if not lo <= number <= hi:
        raise unprocessable(f"{CODE}IMPOSSIBLE_VALUE", f"{where}: {measurement.name} {value} {measurement.unit_ucum} is "
                            f"not a possible reading (allowed {lo:g}-{hi:g})")
    period = r.get("effectivePeriod")
    effective = r.get("effectiveDateTime") or (period.get("start") if isinstance(period, dict) else None)
    _parse_time(effective, f"{where}.effective")


def _check_questionnaire_response(r: dict, where: str, refs) -> None:
    questionnaire = r.get("questionnaire")
    if questionnaire is not None:  # the triage reads the answers' significance from it
        try:
            type_, _ = refs.parse(questionnaire)
        except ValueError:
            type_ = None
        if type_ != "Questionnaire":
            raise bad_request("REQUEST_INVALID_REFERENCE", f"{where}.questionnaire: {questionnaire!r} is not a "
                              "reference to a Questionnaire")
    if r.get("status") != "completed":
        raise unprocessable(f"{CODE}INVALID_STATUS", f"Measurement status {r.get('status')} is invalid. Status must be "
                            "completed for measurement of type QuestionnaireResponse")
    _parse_time(r.get("authored"), f"{where}.authored")
    items = r.get("item") or []
    if not isinstance(items, list):
        raise bad_request(f"{CODE}INVALID_BUNDLE", f"{where}.item must be a list")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("linkId"), str):
            raise bad_request(f"{CODE}INVALID_BUNDLE", f"{where}.item[{k}] needs a linkId")
        answers = item.get("answer")
        if (not isinstance(answers, list) or len(answers) != 1 or not isinstance(answers[0], dict)
                or not isinstance(answers[0].get("valueBoolean"), bool)):
            raise unprocessable(f"{CODE}TOO_MANY_ANSWERS" if isinstance(answers, list) and len(answers) > 1
                                else f"{CODE}TOO_FEW_ANSWERS",
                                f"{where}.item[{k}] needs exactly one valueBoolean answer")


def measurement_of(resource: dict) -> str | None:
    coding = ((resource.get("code") or {}).get("coding") or [{}])[0]
    m = BY_CODE.get((coding.get("system"), coding.get("code")))
    return m.name if m else None


_RANGES: dict[tuple[str, int], ReferenceRanges] = {}
_RANGES_MAX = 200_000  # ~25 MB at most; 10,000 citizens have ~45,000 ServiceRequests


def _ranges(sr_id: str, version: int, body: str) -> ReferenceRanges:
    """A ServiceRequest's thresholds, parsed once per (id, version): a citizen's four or five
    requests are read at every submission but change only when a clinician adjusts them (a new
    version, so a new key)."""
    key = (sr_id, version)
    found = _RANGES.get(key)
    if found is None:
        if len(_RANGES) >= _RANGES_MAX:
            _RANGES.clear()
        found = _RANGES[key] = fr.ranges_from_service_request(jsonfast.loads(body))
    return found


def triage_input(plan: Plan) -> dict:
    """What the triage needs, taken while the submission is validated (its ServiceRequests are loaded
    then anyway), so the triage worker need not read the resources back. Kept in the durable outbox
    payload; ±inf bounds travel as null."""
    values, ranges, answers, questionnaire = {}, {}, {}, None
    for e in plan.entries:
        r = e["resource"]
        sr_id = r["basedOn"][0]["reference"].rsplit("/", 1)[-1]
        if r["resourceType"] == "Observation":
            name = measurement_of(r)
            values[name] = float(r["valueQuantity"]["value"])
            rr = plan.ranges.get(sr_id)
            if rr is not None:
                ranges[name] = [None if abs(b) == float("inf") else b
                                for b in (rr.red_low, rr.yellow_low, rr.yellow_high, rr.red_high)]
        else:
            answers.update({item["linkId"]: bool(item["answer"][0]["valueBoolean"]) for item in r.get("item") or []})
            questionnaire = r.get("questionnaire") or questionnaire
    return {"values": values, "ranges": ranges, "answers": answers, "questionnaire": questionnaire}


def _utc(value: str) -> str:
    """The effective-time column holds UTC (``…+00:00``), so times compare as text on both databases."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC).isoformat()


def submission_key(idents: list[str]) -> str:
    """The unique key of a submission: its first entry's identifier (a client's retry repeats it)."""
    return f"provenance:{idents[0]}"


def store_rows(plan: Plan, refs, now: str) -> tuple[list[Row], list[str]]:
    """Rows for the submitted resources plus their Provenance; returns rows and response locations."""
    ids = {e["fullUrl"]: new_id() for e in plan.entries}
    urls = {full: refs.url(e["resource"]["resourceType"], ids[full]) for full, e in zip(ids, plan.entries, strict=True)}
    rows, locations = [], []
    for e, ident in zip(plan.entries, plan.idents, strict=True):
        r = dict(e["resource"])  # shallow: only id, meta and identifier are set at the top level
        id_ = ids[e["fullUrl"]]
        r["id"] = id_
        r["meta"] = {**(r.get("meta") or {}), "versionId": "1", "lastUpdated": now}
        r.setdefault("identifier", [{"system": "urn:ietf:rfc:3986", "value": ident}])
        text = jsonfast.dumps(r)
        for full, url in urls.items():  # references between co-submitted resources become absolute URLs
            if full in text:  # (the identifier keeps the client's urn:uuid: it is the idempotency key)
                text = text.replace(f'"reference":"{full}"', f'"reference":"{url}"')
        effective = _utc(r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start") or r.get("authored"))
        code = ((r.get("code") or {}).get("coding") or [{}])[0].get("code")
        rows.append(Row(r["resourceType"], id_, 1, now, plan.patient_id, plan.episode_id, plan.team_id, plan.org_id,
                        r.get("status"), code, effective, None, None, text))
        locations.append(f"{urls[e['fullUrl']]}/_history/1")
    prov_id = new_id()
    provenance = {
        "resourceType": "Provenance", "id": prov_id, "meta": {"versionId": "1", "lastUpdated": now},
        "target": [{"reference": urls[e["fullUrl"]], "identifier": {"system": "urn:ietf:rfc:3986", "value": ident}}
                   for e, ident in zip(plan.entries, plan.idents, strict=True)],
        "recorded": now,
        "policy": ["http://ehealth.sundhed.dk/policy/coherent-submitted-measurement"],
        "agent": [{"who": {"reference": refs.url("Patient", plan.patient_id)}}],
    }
    rows.append(Row("Provenance", prov_id, 1, now, plan.patient_id, plan.episode_id, plan.team_id, plan.org_id, None,
                    None, now, None, submission_key(plan.idents), jsonfast.dumps(provenance)))
    return rows, locations
