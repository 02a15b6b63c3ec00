"""The careplan service's resources: EpisodeOfCare, CarePlan and ServiceRequest (with the thresholds).

A ServiceRequest says *what* to measure (``code``), *when* (``occurrenceTiming``) and the patient's
**thresholds** (``ehealth-referenceRange``: RELRAL = red range, RELGAL = yellow range)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from twin.rules import MEASUREMENTS, ReferenceRanges
from twin.server.fhir.common import (
    ABSOLUTE_RANGE_TYPE_SYSTEM,
    EXT_CAREMANAGER_ORGANIZATION,
    EXT_EPISODE_OF_CARE,
    EXT_REFERENCE_RANGE,
    EXT_SHARING_APPROVAL_POLICY,
    EXT_SHARING_POLICY,
    QUESTIONNAIRE_CODE,
    REFERENCE_RANGE_TYPE_SYSTEM,
    SHARING_APPROVAL_POLICY_SYSTEM,
    SHARING_POLICY_SYSTEM,
    URI_SYSTEM,
    WEEKDAYS,
    Refs,
    _base,
    _concept,
    _ext,
    _measurement,
    _quantity,
    fhir_datetime,
)


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
