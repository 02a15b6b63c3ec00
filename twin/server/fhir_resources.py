"""Builders of the FHIR R4 resources the twin's API stores and returns, shaped like FUT's profiles.

FUT (the national eHealth infrastructure, reference/fut-infrastructure.md) is a set of HAPI FHIR R4
servers, one per domain, that reference each other by **absolute URL**
(``{base}/{service}/{Type}/{id}``; :class:`Refs` builds and parses them). Its data model is a chain:

* **Patient** (service ``patient``): the citizen, identified by CPR number.
* **EpisodeOfCare** (``careplan``): the citizen's telemedicine course: ``managingOrganization`` is the
  data controller (a municipality or a region), ``team`` the CareTeam(s) following the citizen. Every
  later resource names its episode (extension ``workflow-episodeOfCare`` or ``ehealth-task-episodeOfCare``)
  and access control is checked against it.
* **CarePlan** (``careplan``): the plan within the episode; ``careTeam`` and ``activity`` → the
  ServiceRequests.
* **ServiceRequest** (``careplan``): *what* to measure (``code``), *when* (``occurrenceTiming``) and
  the patient's **thresholds** (``ehealth-referenceRange``: RELRAL = red range, RELGAL = yellow range).
* **measurements** (``measurement``): Observations and a QuestionnaireResponse, submitted together by
  the citizen through ``$submit-measurement`` (:func:`submission`); the server gives them ids and
  links them with one implicit Provenance (policy *coherent-submitted-measurement*).
* **triage** (``task``): asynchronously, the rules classify the submission: a ClinicalImpression
  ``TriagingResult`` (finding red / yellow / green) and a Task ``MeasurementForAssessment`` for the
  responsible CareTeam, whose nurse claims it, records a ClinicalImpression ``MeasurementAssessment``
  and completes the Task.

CareTeams, Practitioners and Organizations (``organization``) are independent of patients: one team
follows many citizens.

Every builder is a pure function returning a plain JSON-ready dict; ids are given, never invented
(resources inside a submission have no id: the server assigns them). Profiles, extensions and code
systems are the implementation guide's (IG = github.com/fut-infrastructure/implementation-guide,
v8.0.0; ``input/fsh`` and ``input/resources``) unless a comment says the twin chose them. Date-times
without a zone are taken as Danish standard time (+01:00: the twin's clock has no DST, docs/TRACE.md).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from twin.rules import COLOURS, MEASUREMENTS, Finding, QuestionRule, ReferenceRanges

# --------------------------------------------------------------------------------------------------
# Canonical URLs
# --------------------------------------------------------------------------------------------------

SD = "http://ehealth.sundhed.dk/fhir/StructureDefinition/"  # IG canonical base of profiles and extensions
PROFILE = {  # IG input/fsh/ehealth-<name>.fsh (Communication's profile is ehealth-message)
    "Patient": SD + "ehealth-patient",
    "Communication": SD + "ehealth-message",
    "EpisodeOfCare": SD + "ehealth-episodeofcare",
    "CarePlan": SD + "ehealth-careplan",
    "ServiceRequest": SD + "ehealth-servicerequest",
    "ActivityDefinition": SD + "ehealth-activitydefinition",
    "Condition": SD + "ehealth-condition",
    "Observation": SD + "ehealth-observation",
    "QuestionnaireResponse": SD + "ehealth-questionnaireresponse",
    "Provenance": SD + "ehealth-provenance",
    "Task": SD + "ehealth-task",
    "ClinicalImpression": SD + "ehealth-clinicalimpression",
    "Organization": SD + "ehealth-organization",
    "CareTeam": SD + "ehealth-careteam",
    "Practitioner": SD + "ehealth-practitioner",
    "PractitionerRole": SD + "ehealth-practitionerrole",
    "Questionnaire": SD + "ehealth-questionnaire",
}
OPERATION_DEFINITION = "http://ehealth.sundhed.dk/fhir/OperationDefinition/-s-"  # IG input/resources/OperationDefinition--s-<op>.json

# Extensions
EXT_EPISODE_OF_CARE = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare"  # IG ehealth-observation.fsh (core HL7 extension)
EXT_TASK_EPISODE_OF_CARE = SD + "ehealth-task-episodeOfCare"  # IG ehealth-task.fsh
EXT_TASK_CATEGORY = SD + "ehealth-task-category"  # IG ehealth-task.fsh
EXT_TASK_RESPONSIBLE = SD + "ehealth-task-responsible"  # IG ehealth-task.fsh
EXT_RESTRICTION_CATEGORY = SD + "ehealth-restriction-category"  # IG ehealth-task.fsh, ehealth-message.fsh
EXT_RESOLVED_TIMING = SD + "ehealth-resolved-timing"  # IG ehealth-media.fsh (Extension: ehealth-resolved-timing)
EXT_REFERENCE_RANGE = SD + "ehealth-referenceRange"  # IG ehealth-ext-referenceRange.fsh
EXT_SHARING_POLICY = SD + "ehealth-sharingPolicy"  # IG ehealth-ext-sharingPolicy.fsh
EXT_SHARING_APPROVAL_POLICY = SD + "ehealth-sharingApprovalPolicy"  # IG ehealth-ext-sharingApprovalPolicy.fsh
EXT_CAREMANAGER_ORGANIZATION = SD + "ehealth-episodeofcare-caremanagerOrganization"  # IG ehealth-episodeofcare.fsh
EXT_ORG_SOURCE = SD + "ehealth-organization-source"  # IG ehealth-organization.fsh
EXT_ORG_SYNC_STATUS = SD + "ehealth-organization-synchronizationStatus"  # IG ehealth-organization.fsh
EXT_ORG_MUNICIPALITY_CODE = SD + "ehealth-organization-municipalityCode"  # IG ehealth-organization.fsh
EXT_ORG_REGION_CODE = SD + "ehealth-organization-regionCode"  # IG ehealth-organization.fsh
EXT_CARETEAM = SD + "ehealth-ext-careteam"  # IG ehealth-ext-careteam.fsh
EXT_QUESTIONNAIRE_TYPE = SD + "ehealth-questionnaire-type"  # IG ehealth-questionnaire.fsh
EXT_MODIFIER_ROLE = SD + "ehealth-modifier-role"  # IG ehealth-questionnaire.fsh (example in POST_search-measurements)
EXT_ANSWER_SIGNIFICANCE = SD + "ehealth-questionnaire-answerSignificance"  # IG StructureDefinition-ehealth-questionnaire-answerSignificance
EXT_ANSWER_CONDITION = SD + "ehealth-answer-Condition"  # IG ehealth-questionnaire.fsh (Extension: ehealth-answer-Condition)
EXT_CI_DECISION = SD + "ehealth-clinicalimpression-decision"  # IG ehealth-clinicalimpression.fsh
EXT_CI_CAREPLAN = SD + "ehealth-clinicalimpression-careplan"  # IG ehealth-clinicalimpression.fsh
EXT_RECIPIENT_CARETEAM = SD + "ehealth-communication-recipientCareTeam"  # IG ehealth-message.fsh
EXT_SENDER_CARETEAM = SD + "ehealth-communication-senderCareTeam"  # IG ehealth-message.fsh
EXT_ADMINISTRATIVE_STATUS = SD + "ehealth-administrative-status"  # IG ehealth-message.fsh
EXT_MESSAGE_TITLE = SD + "ehealth-title"  # IG ehealth-message.fsh
EXT_THREAD_ID = SD + "ehealth-thread-id"  # IG ehealth-message.fsh
# The twin's own (no FUT equivalent): FUT's answerSignificance judges one answer; a rule needing
# several "yes" answers (dyspnoea + cough → red) lives in FUT's Drools Library. The twin records the
# whole rule (its questions in order and its position) inside the answerSignificance it hangs on the
# first question, so the questionnaire alone carries the triage rules.
EXT_TWIN_QUESTION_RULE = "urn:fut-twin:StructureDefinition:question-rule"  # twin's own

# Code systems and identifier systems
UCUM = "http://unitsofmeasure.org"  # FHIR R4 core (IG observation-code → UCUM concept map)
SNOMED = "http://snomed.info/sct"  # FHIR R4 core
SOR_SYSTEM = "urn:oid:1.2.208.176.1.1"  # SOR (Sundhedsvæsenets Organisationsregister) identifiers, DK core
CPR_SYSTEM = "urn:oid:1.2.208.176.1.2"  # CPR numbers, IG ehealth-patient.fsh (Instance patient01)
SKS_SYSTEM = "urn:oid:1.2.208.176.2.4"  # SKS classification (ICD-10 diagnoses), DK core
URI_SYSTEM = "urn:ietf:rfc:3986"  # identifiers that are URIs: CareTeam (IG error CARETEAM_..._IDENTIFIER_SYSTEM_IS_MISSING), idempotency keys
USERNAME_SYSTEM = "urn:fut-twin:username"  # twin's own: the seeded login name (FUT users come from SEB/NemLog-in)
ORG_KIND_SYSTEM = "urn:fut-twin:organization-kind"  # twin's own: kommune | region (FUT uses SOR SNOMED types, not reproduced)
ERROR_SYSTEM = "http://ehealth.sundhed.dk/cs/error-codes"  # twin's choice, = twin.server.errors.ERROR_SYSTEM; the IG lists the codes (systematic-error-messages) and says the message is in issue.diagnostics
ORG_SOURCE_SYSTEM = "http://ehealth.sundhed.dk/cs/organization-source"  # IG CodeSystem-ehealth-organization-source
ORG_SYNC_STATUS_SYSTEM = "http://ehealth.sundhed.dk/cs/organization-synchronization-status"  # IG CodeSystem-ehealth-organization-synchronization-status
CARETEAM_ROLE_SYSTEM = "http://ehealth.sundhed.dk/cs/careteam-participant-role"  # IG CodeSystem-ehealth-careteam-participant-role
REFERENCE_RANGE_TYPE_SYSTEM = "http://ehealth.sundhed.dk/cs/reference-range-type"  # IG CodeSystem-ehealth-reference-range-type (RELRAL, RELGAL)
ABSOLUTE_RANGE_TYPE_SYSTEM = "urn:oid:1.2.208.184.100.1"  # MedCom absolute range types RAL (red) / GAL (yellow), read only
RESOLVED_TIMING_TYPE_SYSTEM = "http://ehealth.sundhed.dk/cs/resolved-timing-type"  # IG CodeSystem-ehealth-resolved-timing-type
SHARING_POLICY_SYSTEM = "http://ehealth.sundhed.dk/cs/measurement-sharing-policies"  # IG CodeSystem-ehealth-measurement-sharing-policies
SHARING_APPROVAL_POLICY_SYSTEM = "http://ehealth.sundhed.dk/cs/measurement-sharing-approval-policies"  # IG CodeSystem-ehealth-measurement-sharing-approval-policies
QUESTIONNAIRE_TYPE_SYSTEM = "http://ehealth.sundhed.dk/cs/questionnaire-types"  # IG CodeSystem-ehealth-questionnaire-types
MODIFIER_ROLE_SYSTEM = "http://ehealth.sundhed.dk/cs/modifier-role"  # IG CodeSystem-ehealth-modifier-role
SIGNIFICANCE_SYSTEM = "http://ehealth.sundhed.dk/cs/questionnaire-item-significance-indicator"  # IG CodeSystem-ehealth-questionnaire-item-significance-indicator
PROVENANCE_POLICY_COHERENT = "http://ehealth.sundhed.dk/policy/ehealth/coherent-submitted-measurement"  # IG CodeSystem-ehealth-provenance-policies
CI_CODE_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-codes"  # IG CodeSystem-ehealth-clinicalimpression-codes
CI_FINDING_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-finding-codes"  # IG CodeSystem-ehealth-clinicalimpression-finding-codes
CI_DECISION_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-decision-codes"  # IG CodeSystem-ehealth-clinicalimpression-decision-codes
CI_INVESTIGATION_SYSTEM = "http://ehealth.sundhed.dk/cs/clinicalimpression-investigation-item-codes"  # IG CodeSystem-ehealth-clinicalimpression-investigation-item-codes
TASK_CATEGORY_SYSTEM = "http://ehealth.sundhed.dk/cs/task-category"  # IG CodeSystem-ehealth-task-category (GET_Task_search example)
RESTRICTION_CATEGORY_SYSTEM = "http://ehealth.sundhed.dk/cs/restriction-category"  # IG CodeSystem-ehealth-restriction-category
MESSAGE_CATEGORY_SYSTEM = "http://ehealth.sundhed.dk/cs/message-category"  # IG ehealth-message.fsh (category DkTmCategory)
ADMINISTRATIVE_STATUS_SYSTEM = "http://ehealth.sundhed.dk/cs/administrative-status"  # IG CodeSystem-ehealth-administrative-status

QUESTIONNAIRE_CODE = (SNOMED, "445988008", "Questionnaire")  # ActivityDefinition code of questionnaires (fut-infrastructure.md §4)

# Codes
CARETEAM_ROLES = frozenset({  # IG CodeSystem-ehealth-careteam-participant-role, plus the twin's "auditor"
    "citizenEnroller", "clinicalViewer", "monitoringAssistor", "monitoring_adjuster", "reportUser",
    "questionnaireEditor", "clinicalAdministrator", "clinicalSupporter", "careteamAdministrator", "orderPlacer",
    "serviceAndLogistics", "incidentReporter", "incidentManager", "catalogueResponsible", "catalogueAnnotator",
    "contractResponsible", "terminologyAdministrator", "dataScientist",
    "auditor",  # twin's own: reads the audit trail; not in the IG code system
})
TASK_PRIORITIES = ("routine", "urgent", "asap", "stat")  # FHIR R4 request-priority, in rising order
RESOLVED_TIMING_TYPES = ("Resolved", "Unresolved", "Adhoc", "Extra")  # IG CodeSystem-ehealth-resolved-timing-type
TASK_CATEGORY_DISPLAY = {  # IG CodeSystem-ehealth-task-category (displays as in the IG examples)
    "MeasurementForAssessment": "Need assessment of measurement",
    "MissingMeasurementResolving": "Need resolving of why scheduled measurement has not been submitted",
}
FINDING_DISPLAY = {"red": "Red overall assessment", "yellow": "Yellow overall assessment",
                   "green": "Green overall assessment"}  # IG CodeSystem-ehealth-clinicalimpression-finding-codes
DISEASE_CONDITION = {  # cohort → (system, code, display) for CareTeam.reasonCode / Condition; SKS ICD-10
    "copd": (SKS_SYSTEM, "DJ44", "Kronisk obstruktiv lungesygdom"),
    "heart-failure": (SKS_SYSTEM, "DI50", "Hjerteinsufficiens"),
}
QUESTION_TEXT = {  # Danish wording of the twin's symptom questions (twin.rules.measurements.QUESTIONS)
    "dyspnoea": "Er du mere forpustet end du plejer?",
    "cough": "Hoster du mere end du plejer?",
    "sputum": "Har du mere eller misfarvet opspyt?",
    "oedema": "Er dine ben eller ankler mere hævede end de plejer?",
}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # FHIR R4 days-of-week

TWIN_TZ = timezone(timedelta(hours=1))  # Danish standard time; the twin's clock has no DST (docs/TRACE.md)
SUBMISSION_NAMESPACE = uuid.UUID("6c1f3e0a-5b7d-5c2e-9a41-2f0d8e7b6a10")  # twin's own uuid5 namespace for submission keys

# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------

SERVICE = {  # resource type → FUT service that serves it (fut-infrastructure.md §1, docs/API.md)
    "Patient": "patient", "Communication": "patient",
    "EpisodeOfCare": "careplan", "CarePlan": "careplan", "ServiceRequest": "careplan",
    "ActivityDefinition": "careplan", "Condition": "careplan",
    "Observation": "measurement", "QuestionnaireResponse": "measurement", "Provenance": "measurement",
    "Task": "task", "ClinicalImpression": "task",
    "Organization": "organization", "CareTeam": "organization", "Practitioner": "organization",
    "PractitionerRole": "organization",
    "Questionnaire": "questionnaire",
}
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id
_RELATIVE = re.compile(r"(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


class Refs:
    """Absolute FUT-style references on one public base URL: ``{base}/{service}/{Type}/{id}``."""

    def __init__(self, base_url: str) -> None:
        base = base_url.rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", base):
            raise ValueError(f"base URL must be http(s)://host[/path], got {base_url!r}")
        self.base = base

    def __repr__(self) -> str:
        return f"Refs({self.base!r})"

    def url(self, type_: str, id_: str | int) -> str:
        """The absolute URL of ``type_/id_`` on its service."""
        if type_ not in SERVICE:
            raise ValueError(f"unknown resource type {type_!r}")
        return f"{self.base}/{SERVICE[type_]}/{type_}/{_check_id(id_)}"

    def ref(self, type_: str, id_: str | int) -> dict:
        """A FHIR Reference to ``type_/id_``."""
        return {"reference": self.url(type_, id_)}

    def service_base(self, service: str) -> str:
        """The base URL of one service, e.g. ``{base}/measurement``."""
        return f"{self.base}/{service}"

    def parse(self, url: str) -> tuple[str, str]:
        """``(type, id)`` of an absolute reference on this base or a relative ``Type/id``.

        A ``/_history/{version}`` suffix is accepted and dropped. Anything else (another host, a
        service that does not serve the type, an unknown type, a malformed id) raises ValueError.
        """
        if not isinstance(url, str) or not url:
            raise ValueError(f"not a reference: {url!r}")
        path = url
        if "://" in url:
            prefix = self.base + "/"
            if not url.startswith(prefix):
                raise ValueError(f"not a reference to this server ({self.base}): {url!r}")
            service, _, path = url[len(prefix):].partition("/")
        else:
            service = None
        m = _RELATIVE.fullmatch(path)
        if not m or m["type"] not in SERVICE:
            raise ValueError(f"not a reference to a known resource: {url!r}")
        if service is not None and SERVICE[m["type"]] != service:
            raise ValueError(f"{m['type']} is served by {SERVICE[m['type']]!r}, not {service!r}: {url!r}")
        return m["type"], m["id"]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _check_id(id_: str | int) -> str:
    s = str(id_)
    if not _ID.fullmatch(s):
        raise ValueError(f"not a FHIR id: {id_!r}")
    return s


def _base(type_: str, id_: str | int | None) -> dict:
    out: dict[str, Any] = {"resourceType": type_}
    if id_ is not None:
        out["id"] = _check_id(id_)
    out["meta"] = {"profile": [PROFILE[type_]]}
    return out


def fhir_datetime(value: str | datetime | date) -> str:
    """A FHIR dateTime: ISO text with a zone; a naive time is Danish standard time (+01:00)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        return value.isoformat()
    elif isinstance(value, str):
        if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", value):
            return value  # a date (or year / year-month): FHIR allows it without a zone
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"not an ISO date-time: {value!r}") from e
    else:
        raise ValueError(f"not a date-time: {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=TWIN_TZ)
    return dt.isoformat()


def _coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None) -> dict:
    return {"coding": [_coding(system, code, display)]}


def _ext(url: str, **value: Any) -> dict:
    (key, v), = value.items()
    return {"url": url, key: v}


def _human_name(name: str) -> dict:
    parts = name.split()
    if not parts:
        raise ValueError("a name must not be empty")
    out: dict[str, Any] = {"use": "official", "text": name, "family": parts[-1]}
    if len(parts) > 1:
        out["given"] = parts[:-1]
    return out


def _measurement(name: str):
    if name not in MEASUREMENTS:
        raise ValueError(f"unknown measurement {name!r}; known: {sorted(MEASUREMENTS)} or 'questionnaire'")
    return MEASUREMENTS[name]


def _device_value(measurement: str, value: float) -> float | int:
    """The value as the device reports it: the canonical value of docs/TRACE.md."""
    decimals = _measurement(measurement).decimals
    v = round(float(value), decimals)
    return int(v) if decimals == 0 else v


def _quantity(measurement: str, value: float | int) -> dict:
    m = _measurement(measurement)
    return {"value": value, "unit": m.unit_ucum, "system": UCUM, "code": m.unit_ucum}


def _resolved_timing(version: str, timing_type: str, start: str | None, end: str | None) -> dict:
    """ext ehealth-resolved-timing; start/end only (and always) with type Resolved (IG error
    MEASUREMENT_SUBMITMEASUREMENT_INVALID_RESOLVED_TIMING)."""
    if timing_type not in RESOLVED_TIMING_TYPES:
        raise ValueError(f"resolved timing type must be one of {RESOLVED_TIMING_TYPES}, got {timing_type!r}")
    if (timing_type == "Resolved") != (start is not None and end is not None):
        raise ValueError("resolved timing needs start and end exactly when its type is Resolved")
    parts: list[dict] = [{"url": "serviceRequestVersionId", "valueId": _check_id(version)}]
    if start is not None and end is not None:
        parts += [{"url": "start", "valueDateTime": fhir_datetime(start)},
                  {"url": "end", "valueDateTime": fhir_datetime(end)}]
    parts.append({"url": "type", "valueCodeableConcept": _concept(RESOLVED_TIMING_TYPE_SYSTEM, timing_type, timing_type)})
    return {"url": EXT_RESOLVED_TIMING, "extension": parts}


def _is_missing(value: float | None) -> bool:
    """A skipped reading: None or NaN (the trace's float32 NaN included)."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a number: {value!r}") from e


# --------------------------------------------------------------------------------------------------
# Organisation: Organization, CareTeam, Practitioner, PractitionerRole
# --------------------------------------------------------------------------------------------------


def organization(ref: Refs, id: str, name: str, code: int | str, kind: str) -> dict:
    """A municipality (``kind`` ``municipality``/``kommune``) or region, identified by its code as SOR id."""
    kinds = {"municipality": "kommune", "kommune": "kommune", "region": "region"}
    if kind not in kinds:
        raise ValueError(f"kind must be municipality (kommune) or region, got {kind!r}")
    k = kinds[kind]
    code_text = str(code)
    out = _base("Organization", id)
    out["extension"] = [
        _ext(EXT_ORG_SOURCE, valueCodeableConcept=_concept(ORG_SOURCE_SYSTEM, "SOR", "Sundhedsvæsenets Organisationsregister")),
        _ext(EXT_ORG_SYNC_STATUS, valueCodeableConcept=_concept(ORG_SYNC_STATUS_SYSTEM, "NotSynchronized", "Not synchronized")),
        _ext(EXT_ORG_MUNICIPALITY_CODE, valueString=code_text.zfill(4)) if k == "kommune"
        else _ext(EXT_ORG_REGION_CODE, valueString=code_text),
    ]
    out["identifier"] = [{"use": "official", "system": SOR_SYSTEM, "value": code_text}]
    out["active"] = True
    out["type"] = [_concept(ORG_KIND_SYSTEM, k, "Kommune" if k == "kommune" else "Region")]
    out["name"] = name
    return out


def care_team(ref: Refs, id: str, name: str, organization_id: str,
              participants: Sequence[tuple[str, str]], disease: str | None = "copd") -> dict:
    """A CareTeam of ``organization_id``; ``participants`` are ``(practitioner_id, role_code)``."""
    out = _base("CareTeam", id)
    out["identifier"] = [{"system": URI_SYSTEM,
                          "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ref.url('CareTeam', id))}"}]
    out["status"] = "active"
    out["name"] = name
    members = []
    for practitioner_id, role in participants:
        if role not in CARETEAM_ROLES:
            raise ValueError(f"unknown care team role {role!r}")
        members.append({"role": [_concept(CARETEAM_ROLE_SYSTEM, role)],
                        "member": ref.ref("Practitioner", practitioner_id),
                        "onBehalfOf": ref.ref("Organization", organization_id)})
    if members:
        out["participant"] = members
    if disease is not None:
        out["reasonCode"] = [_concept(*DISEASE_CONDITION[disease]) if disease in DISEASE_CONDITION
                             else {"text": disease}]
    out["managingOrganization"] = [ref.ref("Organization", organization_id)]
    return out


def practitioner(ref: Refs, id: str, name: str, username: str) -> dict:
    out = _base("Practitioner", id)
    out["identifier"] = [{"system": USERNAME_SYSTEM, "value": username}]
    out["active"] = True
    out["name"] = [_human_name(name)]
    return out


def practitioner_role(ref: Refs, id: str, practitioner_id: str, organization_id: str, care_team_id: str,
                      role_code: str) -> dict:
    """The practitioner's role in one care team (FUT's ``$persist-login`` writes these)."""
    if role_code not in CARETEAM_ROLES:
        raise ValueError(f"unknown care team role {role_code!r}")
    out = _base("PractitionerRole", id)
    out["extension"] = [_ext(EXT_CARETEAM, valueReference=ref.ref("CareTeam", care_team_id))]
    out["active"] = True
    out["practitioner"] = ref.ref("Practitioner", practitioner_id)
    out["organization"] = ref.ref("Organization", organization_id)
    out["code"] = [_concept(CARETEAM_ROLE_SYSTEM, role_code)]
    return out


# --------------------------------------------------------------------------------------------------
# Patient and care plan: Patient, EpisodeOfCare, CarePlan, ServiceRequest, Questionnaire
# --------------------------------------------------------------------------------------------------


def patient(ref: Refs, id: str, cpr: str, name: str, female: bool, birth_date: str | date) -> dict:
    """A citizen; ``cpr`` is ten digits (synthetic in the twin)."""
    if not re.fullmatch(r"\d{10}", str(cpr)):
        raise ValueError(f"a CPR number is ten digits, got {cpr!r}")
    out = _base("Patient", id)
    out["identifier"] = [{"use": "official", "system": CPR_SYSTEM, "value": str(cpr)}]
    out["active"] = True
    out["name"] = [_human_name(name)]
    out["gender"] = "female" if female else "male"
    out["birthDate"] = birth_date.isoformat() if isinstance(birth_date, date) else str(birth_date)
    return out


def episode_of_care(ref: Refs, id: str, patient_id: str, organization_id: str, care_team_id: str, status: str,
                    start: str | datetime, end: str | datetime | None = None,
                    condition_id: str | None = None) -> dict:
    """The citizen's telemedicine course, managed by ``organization_id`` and followed by ``care_team_id``."""
    out = _base("EpisodeOfCare", id)
    out["extension"] = [_ext(EXT_CAREMANAGER_ORGANIZATION, valueReference=ref.ref("Organization", organization_id))]
    out["status"] = status
    if condition_id is not None:
        out["diagnosis"] = [{"condition": ref.ref("Condition", condition_id)}]
    out["patient"] = ref.ref("Patient", patient_id)
    out["managingOrganization"] = ref.ref("Organization", organization_id)
    out["period"] = {"start": fhir_datetime(start)}
    if end is not None:
        out["period"]["end"] = fhir_datetime(end)
    out["team"] = [ref.ref("CareTeam", care_team_id)]
    return out


def care_plan(ref: Refs, id: str, patient_id: str, episode_id: str, care_team_id: str,
              service_request_ids: Iterable[str], start: str | datetime | None = None,
              status: str = "active", condition_id: str | None = None) -> dict:
    out = _base("CarePlan", id)
    out["extension"] = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id))]
    out["status"] = status
    out["intent"] = "order"
    out["subject"] = ref.ref("Patient", patient_id)
    if start is not None:
        out["period"] = {"start": fhir_datetime(start)}
    out["careTeam"] = [ref.ref("CareTeam", care_team_id)]
    if condition_id is not None:
        out["addresses"] = [ref.ref("Condition", condition_id)]
    activities = [{"reference": ref.ref("ServiceRequest", sr)} for sr in service_request_ids]
    if activities:
        out["activity"] = activities
    return out


def _range_extension(type_code: str, low: float, high: float, measurement: str) -> dict | None:
    parts = []
    for bound, value in (("low", low), ("high", high)):
        if math.isnan(value):
            raise ValueError("a reference range bound must not be NaN")
        if not math.isinf(value):
            parts.append({"url": bound, "valueQuantity": _quantity(measurement, float(value))})
    if not parts:
        return None  # the IG: "must have at least a low or a high"; no bound at all = no range
    parts.append({"url": "type", "valueCodeableConcept": _concept(REFERENCE_RANGE_TYPE_SYSTEM, type_code)})
    return {"url": EXT_REFERENCE_RANGE, "extension": parts}


def _timing(weekdays: Sequence[str] | str, sessions_per_week: int, start: str | datetime | None) -> dict:
    sessions_per_week = int(sessions_per_week)
    days = weekdays.split("+") if isinstance(weekdays, str) else list(weekdays)
    days = [d for d in (d.strip().lower()[:3] for d in days) if d]
    for d in days:
        if d not in WEEKDAYS:
            raise ValueError(f"unknown weekday {d!r}; use {WEEKDAYS}")
    if days:
        repeat: dict[str, Any] = {"frequency": 1, "period": 1, "periodUnit": "d",
                                  "dayOfWeek": sorted(set(days), key=WEEKDAYS.index)}
    elif sessions_per_week >= 7 and sessions_per_week % 7 == 0:
        repeat = {"frequency": sessions_per_week // 7, "period": 1, "periodUnit": "d"}
    elif sessions_per_week >= 1:
        repeat = {"frequency": sessions_per_week, "period": 1, "periodUnit": "wk"}
    else:
        raise ValueError("a ServiceRequest needs weekdays or at least one session per week")
    if start is not None:
        repeat = {"boundsPeriod": {"start": fhir_datetime(start)}, **repeat}
    return {"repeat": repeat}


def service_request(ref: Refs, id: str, patient_id: str, episode_id: str, care_plan_id: str, measurement: str,
                    ranges: ReferenceRanges | None, weekdays: Sequence[str] | str, sessions_per_week: int,
                    start: str | datetime | None = None, status: str = "active",
                    activity_definition_id: str | None = None) -> dict:
    """What to measure, when, and the patient's thresholds (RELRAL = red range, RELGAL = yellow range).

    ``measurement`` is a key of ``twin.rules.MEASUREMENTS`` or ``"questionnaire"``. ``weekdays``
    (``["mon", "thu"]`` or ``"mon+thu"``) gives a weekly schedule; without weekdays the timing is
    ``sessions_per_week`` per week (7 → daily). The IG forbids ``ServiceRequest.basedOn``: the plan
    points to its requests (``CarePlan.activity``); the twin also writes the CarePlan's URL as
    ``requisition`` (shared by the plan's requests) so a request can name its plan.
    """
    out = _base("ServiceRequest", id)
    ext = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)),
           _ext(EXT_SHARING_POLICY, valueCodeableConcept=_concept(SHARING_POLICY_SYSTEM, "noSharing")),
           _ext(EXT_SHARING_APPROVAL_POLICY, valueCodeableConcept=_concept(SHARING_APPROVAL_POLICY_SYSTEM, "manual"))]
    if measurement == "questionnaire":
        if ranges is not None:
            raise ValueError("a questionnaire ServiceRequest has no reference ranges")
        code = _concept(*QUESTIONNAIRE_CODE)
    else:
        m = _measurement(measurement)
        code = _concept(m.system, m.code, m.display)
        if ranges is not None:
            for type_code, low, high in (("RELRAL", ranges.red_low, ranges.red_high),
                                         ("RELGAL", ranges.yellow_low, ranges.yellow_high)):
                e = _range_extension(type_code, low, high, measurement)
                if e is not None:
                    ext.append(e)
    out["extension"] = ext
    if activity_definition_id is not None:
        out["instantiatesCanonical"] = [ref.url("ActivityDefinition", activity_definition_id)]
    out["requisition"] = {"system": URI_SYSTEM, "value": ref.url("CarePlan", care_plan_id)}
    out["status"] = status
    out["intent"] = "order"
    out["code"] = code
    out["subject"] = ref.ref("Patient", patient_id)
    out["occurrenceTiming"] = _timing(weekdays, sessions_per_week, start)
    return out


def service_request_measurement(resource: Mapping) -> str:
    """The twin measurement name (or ``"questionnaire"``) a ServiceRequest or Observation codes for."""
    for c in resource.get("code", {}).get("coding", []):
        if (c.get("system"), c.get("code")) == QUESTIONNAIRE_CODE[:2]:
            return "questionnaire"
        for m in MEASUREMENTS.values():
            if (c.get("system"), c.get("code")) == (m.system, m.code):
                return m.name
    raise ValueError("the resource's code is not a known measurement or questionnaire")


def ranges_from_service_request(resource: Mapping) -> ReferenceRanges:
    """The thresholds on a ServiceRequest (inverse of :func:`service_request`); absent bounds are ±inf.

    Reads the IG's relative types (RELRAL red, RELGAL yellow) and the absolute MedCom types (RAL,
    GAL). A request without any range gives all-infinite ranges, which never flag.
    """
    bounds = {"red": [-math.inf, math.inf], "yellow": [-math.inf, math.inf]}
    colour_of = {(REFERENCE_RANGE_TYPE_SYSTEM, "RELRAL"): "red", (REFERENCE_RANGE_TYPE_SYSTEM, "RELGAL"): "yellow",
                 (ABSOLUTE_RANGE_TYPE_SYSTEM, "RAL"): "red", (ABSOLUTE_RANGE_TYPE_SYSTEM, "GAL"): "yellow"}
    for e in resource.get("extension", []):
        if e.get("url") != EXT_REFERENCE_RANGE:
            continue
        parts = {p.get("url"): p for p in e.get("extension", [])}
        codings = parts.get("type", {}).get("valueCodeableConcept", {}).get("coding", [])
        colours = [colour_of[(c.get("system"), c.get("code"))] for c in codings
                   if (c.get("system"), c.get("code")) in colour_of]
        if not colours:
            raise ValueError(f"reference range without a known type: {codings!r}")
        for i, bound in enumerate(("low", "high")):
            if bound in parts:
                try:
                    bounds[colours[0]][i] = float(parts[bound]["valueQuantity"]["value"])
                except (KeyError, TypeError, ValueError) as err:
                    raise ValueError(f"reference range {bound} without a numeric valueQuantity") from err
    return ReferenceRanges(red_low=bounds["red"][0], yellow_low=bounds["yellow"][0],
                           yellow_high=bounds["yellow"][1], red_high=bounds["red"][1])


def questionnaire(ref: Refs, id: str, questions: Sequence[str], rules: Sequence[QuestionRule],
                  owner_organization_id: str | None = None, version: str = "1.0",
                  title: str = "Symptomspørgsmål") -> dict:
    """One yes/no item per question; each rule becomes an ``answerSignificance`` on its first question.

    The answerSignificance is FUT's (significance red/yellow/green when the answer ``= true``); a
    rule over several questions also carries the twin's ``question-rule`` sub-extension naming all
    its questions, which FUT would express as a Drools Library instead.
    """
    if len(set(questions)) != len(questions):
        raise ValueError("questions must be distinct")
    significance: dict[str, list[dict]] = {q: [] for q in questions}
    for index, rule in enumerate(rules):
        missing = [q for q in rule.all_yes if q not in significance]
        if missing:
            raise ValueError(f"rule {rule} asks questions the questionnaire does not have: {missing}")
        twin_rule = {"url": EXT_TWIN_QUESTION_RULE,
                     "extension": [{"url": "index", "valueInteger": index}]
                     + [{"url": "allYes", "valueString": q} for q in rule.all_yes]}
        significance[rule.all_yes[0]].append({"url": EXT_ANSWER_SIGNIFICANCE, "extension": [
            {"url": EXT_ANSWER_CONDITION, "extension": [{"url": "value", "valueBoolean": True},
                                                        {"url": "operator", "valueCode": "="}]},
            {"url": "significance", "valueCoding": _coding(SIGNIFICANCE_SYSTEM, rule.colour)},
            twin_rule,
        ]})
    out = _base("Questionnaire", id)
    ext = [_ext(EXT_QUESTIONNAIRE_TYPE, valueCodeableConcept=_concept(QUESTIONNAIRE_TYPE_SYSTEM, "QQ"))]
    if owner_organization_id is not None:
        ext.append({"url": EXT_MODIFIER_ROLE, "extension": [
            {"url": "reference", "valueReference": ref.ref("Organization", owner_organization_id)},
            {"url": "role", "valueCodeableConcept": _concept(MODIFIER_ROLE_SYSTEM, "owner")}]})
    out["extension"] = ext
    out["url"] = ref.url("Questionnaire", id)
    out["version"] = version
    out["name"] = re.sub(r"[^A-Za-z0-9]", "", f"Questionnaire{id}")
    out["title"] = title
    out["status"] = "active"
    items = []
    for q in questions:
        item: dict[str, Any] = {"linkId": q, "text": QUESTION_TEXT.get(q, q), "type": "boolean", "required": True}
        if significance[q]:
            item = {"extension": significance[q], **item}
        items.append(item)
    if items:
        out["item"] = items
    return out


def question_rules_from_questionnaire(resource: Mapping) -> list[QuestionRule]:
    """The triage rules of a questionnaire (inverse of :func:`questionnaire`).

    A plain FUT answerSignificance (``= true``) is a one-question rule on its item; with the twin's
    ``question-rule`` sub-extension the rule's questions and original order are restored.
    """
    found: list[tuple[float, int, QuestionRule]] = []
    for item in resource.get("item", []):
        for e in item.get("extension", []):
            if e.get("url") != EXT_ANSWER_SIGNIFICANCE:
                continue
            parts = e.get("extension", [])
            colour = next((p.get("valueCoding", {}).get("code") for p in parts if p.get("url") == "significance"), None)
            conditions = [{c.get("url"): c for c in p.get("extension", [])} for p in parts
                          if p.get("url") == EXT_ANSWER_CONDITION]
            if len(conditions) != 1 or conditions[0].get("operator", {}).get("valueCode") != "=" \
                    or conditions[0].get("value", {}).get("valueBoolean") is not True:
                raise ValueError(f"item {item.get('linkId')!r}: only the answer condition '= true' is supported")
            twin = next((p for p in parts if p.get("url") == EXT_TWIN_QUESTION_RULE), None)
            if twin is None:
                order, questions = math.inf, (item["linkId"],)
            else:
                sub = twin.get("extension", [])
                order = next(s["valueInteger"] for s in sub if s.get("url") == "index")
                questions = tuple(s["valueString"] for s in sub if s.get("url") == "allYes")
            found.append((order, len(found), QuestionRule(questions, colour)))
    return [rule for _, _, rule in sorted(found, key=lambda t: (t[0], t[1]))]


# --------------------------------------------------------------------------------------------------
# Measurements: Observation, QuestionnaireResponse, $submit-measurement, Provenance
# --------------------------------------------------------------------------------------------------


def observation(ref: Refs, id_or_none: str | None, patient_id: str, episode_id: str, service_request_id: str,
                measurement: str, value: float | int, effective: str | datetime, performer_patient_id: str,
                resolved_timing_type: str = "Adhoc", service_request_version: str = "1",
                timing_start: str | None = None, timing_end: str | None = None,
                identifier: str | None = None) -> dict:
    """One home measurement, value as given (see :func:`submission` for the device's rounding)."""
    m = _measurement(measurement)
    if _is_missing(value):
        raise ValueError("an Observation needs a value; skipped readings are not submitted")
    out = _base("Observation", id_or_none)
    out["extension"] = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)),
                        _resolved_timing(service_request_version, resolved_timing_type, timing_start, timing_end)]
    if identifier is not None:
        out["identifier"] = [{"system": URI_SYSTEM, "value": identifier}]
    out["basedOn"] = [ref.ref("ServiceRequest", service_request_id)]
    out["status"] = "final"
    out["code"] = _concept(m.system, m.code, m.display)
    out["subject"] = ref.ref("Patient", patient_id)
    out["effectiveDateTime"] = fhir_datetime(effective)
    out["performer"] = [ref.ref("Patient", performer_patient_id)]
    out["valueQuantity"] = _quantity(measurement, value)
    return out


def questionnaire_response(ref: Refs, id_or_none: str | None, patient_id: str, episode_id: str,
                           service_request_id: str, questionnaire_id: str, answers: Mapping[str, bool],
                           authored: str | datetime, resolved_timing_type: str = "Adhoc",
                           service_request_version: str = "1", identifier: str | None = None,
                           source_patient_id: str | None = None) -> dict:
    """The citizen's yes/no answers; ``source`` is the answering patient (default: the subject)."""
    out = _base("QuestionnaireResponse", id_or_none)
    out["extension"] = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)),
                        _resolved_timing(service_request_version, resolved_timing_type, None, None)]
    if identifier is not None:
        out["identifier"] = {"system": URI_SYSTEM, "value": identifier}
    out["basedOn"] = [ref.ref("ServiceRequest", service_request_id)]
    out["questionnaire"] = ref.url("Questionnaire", questionnaire_id)
    out["status"] = "completed"
    out["subject"] = ref.ref("Patient", patient_id)
    out["authored"] = fhir_datetime(authored)
    out["source"] = ref.ref("Patient", source_patient_id or patient_id)
    items = [{"linkId": q, "answer": [{"valueBoolean": bool(a)}]} for q, a in answers.items()]
    if items:
        out["item"] = items
    return out


def submission_key(session_id: str | int, entry: str) -> str:
    """The deterministic ``urn:uuid:`` of one entry (a measurement name or ``questionnaire``) of a session."""
    return f"urn:uuid:{uuid.uuid5(SUBMISSION_NAMESPACE, f'{session_id}/{entry}')}"


def submission(ref: Refs, session_id: str | int, patient_id: str, episode_id: str,
               service_requests: Mapping[str, str], questionnaire_id: str | None,
               values: Mapping[str, float | None], answers: Mapping[str, bool], effective: str | datetime,
               resolved_timing_type: str = "Adhoc") -> dict:
    """The citizen app's ``$submit-measurement`` body: Parameters{measurement = Bundle(transaction)}.

    One Observation per reading that is not skipped (None / NaN), value rounded as the device
    reports it (``MEASUREMENTS[m].decimals``), plus a QuestionnaireResponse when there are answers.
    Each entry's ``fullUrl`` and the resource's ``identifier`` are the same ``urn:uuid:`` derived from
    ``session_id`` and the entry name, so a resubmission of the session is recognisably the same.
    """
    entries = []
    for name, value in values.items():
        if _is_missing(value):
            continue
        if name not in service_requests:
            raise ValueError(f"no ServiceRequest given for measurement {name!r}")
        key = submission_key(session_id, name)
        resource = observation(ref, None, patient_id, episode_id, service_requests[name], name,
                               _device_value(name, value), effective, patient_id,
                               resolved_timing_type=resolved_timing_type, identifier=key)
        entries.append({"fullUrl": key, "resource": resource, "request": {"method": "POST", "url": "Observation"}})
    if answers:
        if questionnaire_id is None or "questionnaire" not in service_requests:
            raise ValueError("answers need a questionnaire_id and service_requests['questionnaire']")
        key = submission_key(session_id, "questionnaire")
        resource = questionnaire_response(ref, None, patient_id, episode_id, service_requests["questionnaire"],
                                          questionnaire_id, answers, effective,
                                          resolved_timing_type=resolved_timing_type, identifier=key)
        entries.append({"fullUrl": key, "resource": resource,
                        "request": {"method": "POST", "url": "QuestionnaireResponse"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction"}
    if entries:
        bundle["entry"] = entries
    return {"resourceType": "Parameters", "parameter": [{"name": "measurement", "resource": bundle}]}


def resource_identifier(resource: Mapping) -> str | None:
    """The ``urn:ietf:rfc:3986`` identifier value (the idempotency key) of a submitted resource."""
    ident = resource.get("identifier")
    for i in [ident] if isinstance(ident, Mapping) else ident or []:
        if i.get("system") == URI_SYSTEM:
            return i.get("value")
    return None


def provenance(ref: Refs, id: str, target_refs: Sequence[str], patient_id: str, recorded: str | datetime) -> dict:
    """The implicit Provenance of one submission: links the co-submitted measurements."""
    if not target_refs:
        raise ValueError("a Provenance needs at least one target")
    out = _base("Provenance", id)
    out["target"] = [{"reference": r} for r in target_refs]
    out["recorded"] = fhir_datetime(recorded)
    out["policy"] = [PROVENANCE_POLICY_COHERENT]
    out["agent"] = [{"who": ref.ref("Patient", patient_id)}]
    return out


# --------------------------------------------------------------------------------------------------
# Triage and follow-up: ClinicalImpression, Task, Communication
# --------------------------------------------------------------------------------------------------


def clinical_impression_triage(ref: Refs, id: str, patient_id: str, episode_id: str,
                               investigation_refs: Sequence[str], finding: str, reasons: Sequence[str],
                               date: str | datetime, care_plan_id: str | None = None) -> dict:
    """The rules' verdict on a submission: code ``TriagingResult``, finding red / yellow / green.

    ``reasons`` (``spo2:red``, ``dyspnoea+cough:red`` …) go to ``finding.basis``, joined by ``"; "``.
    """
    if finding not in COLOURS:
        raise ValueError(f"finding must be one of {COLOURS}, got {finding!r}")
    out = _base("ClinicalImpression", id)
    ext = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id))]
    if care_plan_id is not None:
        ext.append(_ext(EXT_CI_CAREPLAN, valueReference=ref.ref("CarePlan", care_plan_id)))
    out["extension"] = ext
    out["status"] = "completed"
    out["code"] = _concept(CI_CODE_SYSTEM, "TriagingResult", "Result of triaging")
    out["subject"] = ref.ref("Patient", patient_id)
    out["effectiveDateTime"] = out["date"] = fhir_datetime(date)
    if investigation_refs:
        out["investigation"] = [{"code": _concept(CI_INVESTIGATION_SYSTEM, "item-for-investigation"),
                                 "item": [{"reference": r} for r in investigation_refs]}]
    item = {"itemCodeableConcept": _concept(CI_FINDING_SYSTEM, finding, FINDING_DISPLAY[finding])}
    if reasons:
        item["basis"] = "; ".join(reasons)
    out["finding"] = [item]
    return out


def finding_from_clinical_impression(resource: Mapping) -> Finding:
    """The triage Finding a ``TriagingResult`` records (inverse of :func:`clinical_impression_triage`)."""
    for f in resource.get("finding", []):
        for c in f.get("itemCodeableConcept", {}).get("coding", []):
            if c.get("system") == CI_FINDING_SYSTEM and c.get("code") in COLOURS:
                basis = f.get("basis")
                return Finding(c["code"], tuple(basis.split("; ")) if basis else ())
    raise ValueError("the ClinicalImpression has no red/yellow/green finding")


def clinical_impression_assessment(ref: Refs, id: str, patient_id: str, episode_id: str, triage_id: str,
                                   assessor_id: str, date: str | datetime, decision: str = "approved",
                                   note: str | None = None, investigation_refs: Sequence[str] = ()) -> dict:
    """The nurse's assessment: code ``MeasurementAssessment``, ``previous`` → the triage, decision ext."""
    if decision not in ("approved", "approved-for-sharing"):
        raise ValueError(f"decision must be approved or approved-for-sharing, got {decision!r}")
    out = _base("ClinicalImpression", id)
    out["extension"] = [_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)),
                        _ext(EXT_CI_DECISION, valueCodeableConcept=_concept(CI_DECISION_SYSTEM, decision))]
    out["status"] = "completed"
    out["code"] = _concept(CI_CODE_SYSTEM, "MeasurementAssessment", "Assessment of measurement")
    out["subject"] = ref.ref("Patient", patient_id)
    out["effectiveDateTime"] = out["date"] = fhir_datetime(date)
    out["assessor"] = ref.ref("Practitioner", assessor_id)
    out["previous"] = ref.ref("ClinicalImpression", triage_id)
    if investigation_refs:
        out["investigation"] = [{"code": _concept(CI_INVESTIGATION_SYSTEM, "item-for-investigation"),
                                 "item": [{"reference": r} for r in investigation_refs]}]
    if note:
        out["note"] = [{"authorReference": ref.ref("Practitioner", assessor_id), "text": note}]
    return out


def _task(ref: Refs, id: str, category: str, patient_id: str, episode_id: str, care_team_id: str,
          focus_ref: str, priority: str, authored: str | datetime, status: str, description: str | None,
          timing: dict | None) -> dict:
    if priority not in TASK_PRIORITIES:
        raise ValueError(f"priority must be one of {TASK_PRIORITIES}, got {priority!r}")
    ref.parse(focus_ref)  # a reference this server can resolve
    out = _base("Task", id)
    ext = [_ext(EXT_TASK_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)),
           _ext(EXT_TASK_CATEGORY, valueCodeableConcept=_concept(TASK_CATEGORY_SYSTEM, category,
                                                                  TASK_CATEGORY_DISPLAY[category])),
           _ext(EXT_RESTRICTION_CATEGORY, valueCodeableConcept=_concept(RESTRICTION_CATEGORY_SYSTEM,
                                                                         "measurement-monitoring",
                                                                         "Monitoring of measurement(s)")),
           _ext(EXT_TASK_RESPONSIBLE, valueReference=ref.ref("CareTeam", care_team_id))]
    if timing is not None:
        ext.append(timing)
    out["extension"] = ext
    out["status"] = status
    out["intent"] = "plan"
    out["priority"] = priority
    if description:
        out["description"] = description
    out["focus"] = {"reference": focus_ref}
    out["for"] = ref.ref("Patient", patient_id)
    out["authoredOn"] = fhir_datetime(authored)
    return out


def task_for_assessment(ref: Refs, id: str, patient_id: str, episode_id: str, care_team_id: str, focus_ref: str,
                        priority: str, authored: str | datetime, status: str = "ready",
                        description: str | None = None) -> dict:
    """The worklist item of a triaged submission: category ``MeasurementForAssessment``, focus → the
    triage ClinicalImpression (or a measurement), responsible → the CareTeam."""
    return _task(ref, id, "MeasurementForAssessment", patient_id, episode_id, care_team_id, focus_ref, priority,
                 authored, status, description, None)


def task_missing_measurement(ref: Refs, id: str, patient_id: str, episode_id: str, care_team_id: str,
                             service_request_id: str, authored: str | datetime,
                             timing_start: str | datetime | None = None, timing_end: str | datetime | None = None,
                             service_request_version: str = "1", priority: str = "routine",
                             status: str = "ready", description: str | None = None) -> dict:
    """A scheduled measurement that did not come: category ``MissingMeasurementResolving``, focus →
    the ServiceRequest, with the missed slot as a Resolved timing when given."""
    timing = None
    if timing_start is not None or timing_end is not None:
        timing = _resolved_timing(service_request_version, "Resolved", timing_start, timing_end)
    return _task(ref, id, "MissingMeasurementResolving", patient_id, episode_id, care_team_id,
                 ref.url("ServiceRequest", service_request_id), priority, authored, status, description, timing)


def communication(ref: Refs, id: str, patient_id: str, episode_id: str | None, sender_ref: str, recipient_ref: str,
                  text: str, sent: str | datetime, category: str = "message", title: str | None = None,
                  thread_id: str | None = None) -> dict:
    """An ehealth-message (status ``in-progress``, administrative status ``activate`` = unread).

    A CareTeam sender or recipient goes to the ``senderCareTeam`` / ``recipientCareTeam`` extension
    (the profile allows only Patient, Practitioner or Device in ``sender`` / ``recipient``).
    """
    sender_type, _ = ref.parse(sender_ref)
    recipient_type, _ = ref.parse(recipient_ref)
    out = _base("Communication", id)
    ext = []
    if episode_id is not None:
        ext.append(_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)))
    if recipient_type == "CareTeam":
        ext.append(_ext(EXT_RECIPIENT_CARETEAM, valueReference={"reference": recipient_ref}))
    if sender_type == "CareTeam":
        ext.append(_ext(EXT_SENDER_CARETEAM, valueReference={"reference": sender_ref}))
    ext.append(_ext(EXT_ADMINISTRATIVE_STATUS, valueCoding=_coding(ADMINISTRATIVE_STATUS_SYSTEM, "activate")))
    if title:
        ext.append(_ext(EXT_MESSAGE_TITLE, valueString=title))
    if thread_id:
        ext.append(_ext(EXT_THREAD_ID, valueString=thread_id))
    out["extension"] = ext
    out["status"] = "in-progress"
    out["category"] = [_concept(MESSAGE_CATEGORY_SYSTEM, category)]
    out["subject"] = ref.ref("Patient", patient_id)
    out["sent"] = fhir_datetime(sent)
    if recipient_type in ("Patient", "Practitioner"):
        out["recipient"] = [{"reference": recipient_ref}]
    elif recipient_type != "CareTeam":
        raise ValueError(f"a message goes to a Patient, Practitioner or CareTeam, not {recipient_type}")
    if sender_type in ("Patient", "Practitioner"):
        out["sender"] = {"reference": sender_ref}
    elif sender_type != "CareTeam":
        raise ValueError(f"a message comes from a Patient, Practitioner or CareTeam, not {sender_type}")
    out["payload"] = [{"contentString": text}]
    return out


# --------------------------------------------------------------------------------------------------
# Protocol resources: OperationOutcome, Bundles, CapabilityStatement
# --------------------------------------------------------------------------------------------------


def operation_outcome(severity: str, code: str, fut_code: str, message: str) -> dict:
    """One issue: FHIR issue type ``code``, the FUT error code in ``details``, the message in ``diagnostics``."""
    if severity not in ("fatal", "error", "warning", "information"):
        raise ValueError(f"unknown severity {severity!r}")
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code,
                       "details": {"coding": [{"system": ERROR_SYSTEM, "code": fut_code}], "text": message},
                       "diagnostics": message}]}


def bundle_searchset(entries: Sequence[Mapping], total: int | None, self_url: str, next_url: str | None = None) -> dict:
    """A search result; each entry is ``{fullUrl, resource, mode}`` (mode ``match`` or ``include``)."""
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        out["total"] = int(total)
    out["link"] = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        out["link"].append({"relation": "next", "url": next_url})
    rows = []
    for e in entries:
        mode = e.get("mode", "match")
        if mode not in ("match", "include", "outcome"):
            raise ValueError(f"unknown search mode {mode!r}")
        rows.append({"fullUrl": e["fullUrl"], "resource": e["resource"], "search": {"mode": mode}})
    if rows:
        out["entry"] = rows
    return out


_HTTP_REASON = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
                409: "Conflict", 412: "Precondition Failed", 422: "Unprocessable Entity"}


def bundle_transaction_response(entries: Sequence[tuple[str, str | datetime, int | str]]) -> dict:
    """The answer to a transaction: per entry ``(location, last_modified, status)``, e.g.
    ``(".../Observation/921/_history/1", "2025-02-06T14:40:51+00:00", 201)``."""
    rows = []
    for location, last_modified, status in entries:
        text = f"{status} {_HTTP_REASON.get(status, '')}".strip() if isinstance(status, int) else str(status)
        response: dict[str, Any] = {"status": text, "location": location}
        m = re.search(r"/_history/([A-Za-z0-9\-.]+)$", location)
        if m:
            response["etag"] = m.group(1)  # as HAPI/FUT write it (POST_submit-measurement example)
        response["lastModified"] = fhir_datetime(last_modified)
        rows.append({"response": response})
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction-response"}
    if rows:
        out["entry"] = rows
    return out


_INTERACTIONS = {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                 "search-type"}


def capability_statement(base_url: str, resources: Mapping[str, Iterable[str]], operations: Iterable[str],
                         date: str = "2026-01-01", software: str = "FUT twin") -> dict:
    """What the server supports: ``resources`` maps a type to interactions (``search`` = ``search-type``);
    ``operations`` are ``$name`` (system level) or ``Type/$name`` (type level)."""
    by_type: dict[str, list[dict]] = {}
    system_ops = []
    for op in operations:
        type_, _, name = op.rpartition("/")
        name = name.lstrip("$")
        entry = {"name": name, "definition": OPERATION_DEFINITION + name}
        if type_:
            by_type.setdefault(type_, []).append(entry)
        else:
            system_ops.append(entry)
    rest_resources = []
    for type_, interactions in resources.items():
        codes = ["search-type" if i == "search" else i for i in interactions]
        for c in codes:
            if c not in _INTERACTIONS:
                raise ValueError(f"unknown interaction {c!r} for {type_}")
        r: dict[str, Any] = {"type": type_}
        if type_ in PROFILE:
            r["profile"] = PROFILE[type_]
        r["interaction"] = [{"code": c} for c in codes]
        if type_ in by_type:
            r["operation"] = by_type.pop(type_)
        rest_resources.append(r)
    if by_type:
        raise ValueError(f"operations on types not listed in resources: {sorted(by_type)}")
    rest: dict[str, Any] = {"mode": "server", "resource": rest_resources}
    if system_ops:
        rest["operation"] = system_ops
    return {"resourceType": "CapabilityStatement", "status": "active", "date": fhir_datetime(date),
            "kind": "instance", "software": {"name": software},
            "implementation": {"description": software, "url": base_url.rstrip("/")},
            "fhirVersion": "4.0.1", "format": ["application/fhir+json", "json"], "rest": [rest]}
