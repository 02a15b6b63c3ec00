"""The task service's resources: the triage ClinicalImpression, the nurse's assessment, and Tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from twin.rules import COLOURS, Finding
from twin.server.fhir.common import (
    CI_CODE_SYSTEM,
    CI_DECISION_SYSTEM,
    CI_FINDING_SYSTEM,
    CI_INVESTIGATION_SYSTEM,
    EXT_CI_CAREPLAN,
    EXT_CI_DECISION,
    EXT_EPISODE_OF_CARE,
    EXT_RESTRICTION_CATEGORY,
    EXT_TASK_CATEGORY,
    EXT_TASK_EPISODE_OF_CARE,
    EXT_TASK_RESPONSIBLE,
    FINDING_DISPLAY,
    RESTRICTION_CATEGORY_SYSTEM,
    TASK_CATEGORY_DISPLAY,
    TASK_CATEGORY_SYSTEM,
    TASK_PRIORITIES,
    Refs,
    _base,
    _concept,
    _ext,
    _resolved_timing,
    fhir_datetime,
)


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
