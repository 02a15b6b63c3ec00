"""Canonical URLs, code systems, references (:class:`Refs`) and the small helpers every builder uses."""

from __future__ import annotations

import math
import re
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from twin.rules import MEASUREMENTS

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

    def stored_url(self, type_: str, id_: str) -> str:
        """:meth:`url` of a resource read from the database, whose type and id were checked when it
        was written: a search page builds fifty of them."""
        return f"{self.base}/{SERVICE[type_]}/{type_}/{id_}"

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
