"""The measurement service's resources: Observation, QuestionnaireResponse, the ``$submit-measurement``
body, and the implicit Provenance that links one submission."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from twin.server.fhir.common import (
    EXT_EPISODE_OF_CARE,
    PROVENANCE_POLICY_COHERENT,
    SUBMISSION_NAMESPACE,
    URI_SYSTEM,
    Refs,
    _base,
    _concept,
    _device_value,
    _ext,
    _is_missing,
    _measurement,
    _quantity,
    _resolved_timing,
    fhir_datetime,
)


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
