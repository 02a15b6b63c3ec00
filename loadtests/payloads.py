"""The FHIR bodies the apps send, built from trace rows (pure functions on plain dicts).

The load test talks to the API over HTTP only, as a vendor's app would: it builds the FUT shapes
itself (reference/fut-infrastructure.md §2 and §4) and does not import the server. A test checks
:func:`submission` against the server's own builder (``twin.server.fhir.submission``),
so the two cannot drift apart.

A reading is sent as its **canonical value** (docs/TRACE.md): ``round(float(value), decimals)``
with the measurement's decimals — the value the twin triaged, so the API finds the same colour.
Times are the wall clock of the replay (the server refuses measurements from the future, and the
trace's year may lie ahead of today); the trace time stays in the schedule.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping, Sequence

from twin.rules.measurements import MEASUREMENTS

SD = "http://ehealth.sundhed.dk/fhir/StructureDefinition/"
EXT_EPISODE_OF_CARE = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"
EXT_RESOLVED_TIMING = SD + "ehealth-resolved-timing"
EXT_CI_DECISION = SD + "ehealth-clinicalimpression-decision"
EXT_ADMINISTRATIVE_STATUS = SD + "ehealth-administrative-status"
RESOLVED_TIMING_TYPE_SYSTEM = "http://ehealth.sundhed.dk/cs/resolved-timing-type"
CI_CODE_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-codes"
CI_DECISION_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-decision-codes"
MESSAGE_CATEGORY_SYSTEM = "http://ehealth.sundhed.dk/cs/message-category"
ADMINISTRATIVE_STATUS_SYSTEM = "http://ehealth.sundhed.dk/cs/administrative-status"
UCUM = "http://unitsofmeasure.org"
URI_SYSTEM = "urn:ietf:rfc:3986"
SUBMISSION_NAMESPACE = uuid.UUID("6c1f3e0a-5b7d-5c2e-9a41-2f0d8e7b6a10")  # = the server's, so keys agree
DK = dt.timezone(dt.timedelta(hours=1))  # the twin's clock: Danish standard time, no DST
SERVICE = {"Patient": "patient", "Communication": "patient", "EpisodeOfCare": "careplan", "CarePlan": "careplan",
           "ServiceRequest": "careplan", "Observation": "measurement", "QuestionnaireResponse": "measurement",
           "Task": "task", "ClinicalImpression": "task", "CareTeam": "organization",
           "Practitioner": "organization", "Questionnaire": "questionnaire"}


def ref(base: str, type_: str, id_: str) -> dict:
    """An absolute FUT-style reference ``{base}/{service}/{Type}/{id}``."""
    return {"reference": f"{base}/{SERVICE[type_]}/{type_}/{id_}"}


def now_iso(clock: dt.datetime | None = None) -> str:
    """A FHIR dateTime in Danish time: the replay's wall clock, to the second."""
    t = clock or dt.datetime.now(dt.UTC)
    return t.astimezone(DK).replace(microsecond=0).isoformat()


def canonical(name: str, value) -> int | float | None:
    """The value the device reports (docs/TRACE.md); ``None`` for a skipped reading (NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = round(float(value), MEASUREMENTS[name].decimals)
    return int(v) if MEASUREMENTS[name].decimals == 0 else v


def session_readings(row: Mapping) -> dict[str, int | float]:
    """The readings of a ``sessions.parquet`` row that were taken, canonical."""
    out = {}
    for name in MEASUREMENTS:
        v = canonical(name, row.get(name)) if name in row else None
        if v is not None:
            out[name] = v
    return out


def session_answers(row: Mapping, questions: Sequence[str]) -> dict[str, bool]:
    """The questionnaire answers of a session row (``q_<question>``), for the questions asked."""
    if not row.get("has_questionnaire", False):
        return {}
    return {q: bool(row.get(f"q_{q}", False)) for q in questions}


def submission_key(tag: str, session_id: int, entry: str) -> str:
    """The idempotency key of one entry: the same for an upload and its duplicate; ``tag`` makes a
    second replay of the same trace into the same database new submissions, not duplicates."""
    name = f"{session_id}/{entry}" if not tag else f"{tag}/{session_id}/{entry}"
    return f"urn:uuid:{uuid.uuid5(SUBMISSION_NAMESPACE, name)}"


def _resolved_timing() -> dict:
    return {"url": EXT_RESOLVED_TIMING, "extension": [
        {"url": "serviceRequestVersionId", "valueId": "1"},
        {"url": "type", "valueCodeableConcept": {"coding": [
            {"system": RESOLVED_TIMING_TYPE_SYSTEM, "code": "Adhoc", "display": "Adhoc"}]}}]}


def submission(base: str, key_of, citizen_id: int, values: Mapping[str, int | float], answers: Mapping[str, bool],
               questionnaire_id: str, effective: str) -> dict:
    """The ``$submit-measurement`` body: Parameters{measurement = transaction Bundle}.

    One Observation per reading, a QuestionnaireResponse when there are answers; ``key_of(entry)``
    gives each entry's ``urn:uuid:`` (fullUrl and identifier, the server's idempotency key)."""
    patient, episode = f"p-{citizen_id}", f"e-{citizen_id}"
    entries = []
    for name, value in values.items():
        m = MEASUREMENTS[name]
        key = key_of(name)
        obs = {"resourceType": "Observation", "meta": {"profile": [SD + "ehealth-observation"]},
               "extension": [{"url": EXT_EPISODE_OF_CARE, "valueReference": ref(base, "EpisodeOfCare", episode)},
                             _resolved_timing()],
               "identifier": [{"system": URI_SYSTEM, "value": key}],
               "basedOn": [ref(base, "ServiceRequest", f"sr-{citizen_id}-{name}")],
               "status": "final",
               "code": {"coding": [{"system": m.system, "code": m.code, "display": m.display}]},
               "subject": ref(base, "Patient", patient), "effectiveDateTime": effective,
               "performer": [ref(base, "Patient", patient)],
               "valueQuantity": {"value": value, "unit": m.unit_ucum, "system": UCUM, "code": m.unit_ucum}}
        entries.append({"fullUrl": key, "resource": obs, "request": {"method": "POST", "url": "Observation"}})
    if answers:
        key = key_of("questionnaire")
        qr = {"resourceType": "QuestionnaireResponse", "meta": {"profile": [SD + "ehealth-questionnaireresponse"]},
              "extension": [{"url": EXT_EPISODE_OF_CARE, "valueReference": ref(base, "EpisodeOfCare", episode)},
                            _resolved_timing()],
              "identifier": {"system": URI_SYSTEM, "value": key},
              "basedOn": [ref(base, "ServiceRequest", f"sr-{citizen_id}-questionnaire")],
              "questionnaire": ref(base, "Questionnaire", questionnaire_id)["reference"],
              "status": "completed", "subject": ref(base, "Patient", patient), "authored": effective,
              "source": ref(base, "Patient", patient),
              "item": [{"linkId": q, "answer": [{"valueBoolean": bool(a)}]} for q, a in answers.items()]}
        entries.append({"fullUrl": key, "resource": qr, "request": {"method": "POST", "url": "QuestionnaireResponse"}})
    bundle: dict = {"resourceType": "Bundle", "type": "transaction"}
    if entries:
        bundle["entry"] = entries
    return {"resourceType": "Parameters", "parameter": [{"name": "measurement", "resource": bundle}]}


def patient_procedures(base: str, citizen_id: int, today: dt.date) -> dict:
    """``$get-patient-procedures`` for the app's week view: today and the six days after."""
    start = dt.datetime.combine(today, dt.time(0), DK)
    return {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": ref(base, "Patient", f"p-{citizen_id}")},
        {"name": "start", "valueDateTime": start.isoformat()},
        {"name": "end", "valueDateTime": (start + dt.timedelta(days=7)).isoformat()}]}


def search_measurements(base: str, citizen_id: int, end: str, count: int = 10) -> dict:
    """``$search-measurements``: the citizen's latest ``count`` submissions recorded before ``end``."""
    return {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": ref(base, "Patient", f"p-{citizen_id}")},
        {"name": "end", "valueDateTime": end}, {"name": "count", "valueInteger": count}]}


def claim(practitioner_id: str, base: str) -> list[dict]:
    """JSON Patch: the nurse takes the Task (owner = herself, status in-progress)."""
    return [{"op": "add", "path": "/owner", "value": ref(base, "Practitioner", practitioner_id)},
            {"op": "replace", "path": "/status", "value": "in-progress"}]


COMPLETE = [{"op": "replace", "path": "/status", "value": "completed"}]


def assessment(base: str, citizen_id: int, triage_id: str, practitioner_id: str, effective: str) -> dict:
    """The nurse's ClinicalImpression ``MeasurementAssessment`` of a triage (``previous``)."""
    return {"resourceType": "ClinicalImpression", "meta": {"profile": [SD + "ehealth-clinicalimpression"]},
            "extension": [{"url": EXT_EPISODE_OF_CARE, "valueReference": ref(base, "EpisodeOfCare", f"e-{citizen_id}")},
                          {"url": EXT_CI_DECISION, "valueCodeableConcept": {"coding": [
                              {"system": CI_DECISION_SYSTEM, "code": "approved"}]}}],
            "status": "completed",
            "code": {"coding": [{"system": CI_CODE_SYSTEM, "code": "MeasurementAssessment",
                                 "display": "Assessment of measurement"}]},
            "subject": ref(base, "Patient", f"p-{citizen_id}"), "effectiveDateTime": effective, "date": effective,
            "assessor": ref(base, "Practitioner", practitioner_id),
            "previous": ref(base, "ClinicalImpression", triage_id),
            "note": [{"authorReference": ref(base, "Practitioner", practitioner_id),
                      "text": "Assessed in the load test replay"}]}


def message_to_citizen(base: str, citizen_id: int, practitioner_id: str, sent: str) -> dict:
    """After a red alert the nurse writes to the citizen (an ehealth-message, unread)."""
    return {"resourceType": "Communication", "meta": {"profile": [SD + "ehealth-message"]},
            "extension": [{"url": EXT_EPISODE_OF_CARE, "valueReference": ref(base, "EpisodeOfCare", f"e-{citizen_id}")},
                          {"url": EXT_ADMINISTRATIVE_STATUS, "valueCoding": {
                              "system": ADMINISTRATIVE_STATUS_SYSTEM, "code": "activate"}}],
            "status": "in-progress", "category": [{"coding": [{"system": MESSAGE_CATEGORY_SYSTEM, "code": "message"}]}],
            "subject": ref(base, "Patient", f"p-{citizen_id}"), "sent": sent,
            "recipient": [ref(base, "Patient", f"p-{citizen_id}")],
            "sender": ref(base, "Practitioner", practitioner_id),
            "payload": [{"contentString": "We saw your measurement and will call you today."}]}
