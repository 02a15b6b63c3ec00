"""The API calls a citizen session and a clinician action make against the national infrastructure.

This is the vocabulary of the session trace: each session or worklist action names a *call
sequence*, and each sequence is an ordered list of *endpoints* (method, FUT service, path), after
the reference clients of the FUT infrastructure (reference/fut-infrastructure.md §2, calls 1–14).
The platform model and the Locust replay expand a trace row into these calls.

``phase`` says when in the session a call happens: ``start`` (when the session or action starts),
``upload`` (the successful upload of the measurement, possibly after retries) or ``end`` (when the
clinician finishes the item).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    service: str  # FUT service: auth, patient, careplan, measurement, task, organization
    path: str


ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (
    Endpoint("token", "POST", "auth", "/auth/realms/{realm}/protocol/openid-connect/token"),
    Endpoint("refresh_context", "POST", "auth", "/auth/realms/{realm}/protocol/openid-connect/token#refresh"),
    Endpoint("episodeofcare_search", "GET", "careplan", "/EpisodeOfCare?patient={patient}&status=active"),
    Endpoint("get_patient_procedures", "POST", "careplan", "/$get-patient-procedures"),
    Endpoint("servicerequest_read", "GET", "careplan", "/ServiceRequest/{id}"),
    Endpoint("submit_measurement", "POST", "measurement", "/$submit-measurement"),
    Endpoint("careteam_roster", "GET", "careplan",
             "/EpisodeOfCare?team={team}&status=planned,active&_include=EpisodeOfCare:condition&_count=100"),
    Endpoint("task_worklist", "GET", "task", "/Task?responsible={team}&status=ready&_sort=-priority&_include=Task:focus"),
    Endpoint("task_claim", "PATCH", "task", "/Task/{id}"),
    Endpoint("search_measurements", "POST", "measurement", "/$search-measurements"),
    Endpoint("clinicalimpression_create", "POST", "task", "/ClinicalImpression"),
    Endpoint("task_complete", "PATCH", "task", "/Task/{id}"),
    Endpoint("communication_create", "POST", "patient", "/Communication"),
)}
TRACE_ENDPOINTS: tuple[str, ...] = tuple(ENDPOINTS)
"""The endpoints of the trace's call sequences (``demand_per_minute`` has a column for each)."""

# Calls the apps make in the background, outside any session (twin/apps.py): not in the trace, but
# in the load tests and the platform model, where they are often most of the requests.
ENDPOINTS["message_poll"] = Endpoint("message_poll", "GET", "patient",
                                     "/Communication?recipient=Patient/{patient}&_count=20")

# sequence name -> tuple of (endpoint, phase)
CALL_SEQUENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "citizen_submit": (
        ("token", "start"), ("refresh_context", "start"), ("episodeofcare_search", "start"),
        ("get_patient_procedures", "start"), ("servicerequest_read", "start"), ("submit_measurement", "upload"),
    ),
    "clinician_triage_yellow": (
        ("refresh_context", "start"), ("task_worklist", "start"), ("task_claim", "start"),
        ("refresh_context", "start"), ("search_measurements", "start"),
        ("clinicalimpression_create", "end"), ("task_complete", "end"),
    ),
    "clinician_triage_red": (
        ("refresh_context", "start"), ("task_worklist", "start"), ("task_claim", "start"),
        ("refresh_context", "start"), ("search_measurements", "start"),
        ("clinicalimpression_create", "end"), ("task_complete", "end"), ("communication_create", "end"),
    ),
    # Routine review: the roster once, then per citizen reviewed a re-scoped token and a measurement search.
    "clinician_routine_review": (("refresh_context", "start"), ("careteam_roster", "start")),
}
ROUTINE_REVIEW_PER_CITIZEN: tuple[str, ...] = ("refresh_context", "search_measurements")
