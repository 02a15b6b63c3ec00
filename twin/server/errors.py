"""Errors as FHIR OperationOutcomes: every rejection names a code a client can act on.

The codes are the FUT implementation guide's where it has one (``MEASUREMENT_SUBMITMEASUREMENT_…``,
``SECURITY_…``, reference/fut-examples/systematic-error-messages.md) and the service's own, in the
same style, where it has none (``REQUEST_…``, ``SEARCH_…``). A client mistake is a 4xx, never a 500.
"""

from __future__ import annotations

import json

from starlette.responses import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"
ERROR_SYSTEM = "http://ehealth.sundhed.dk/cs/error-codes"  # FUT error codes (systematic-error-messages)


class FhirError(Exception):
    """A request the service refuses: HTTP status, FUT-style code, message, FHIR issue type."""

    def __init__(self, status: int, code: str, message: str, issue_type: str = "invalid") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.issue_type = status, code, message, issue_type


def operation_outcome(code: str, message: str, issue_type: str = "invalid", severity: str = "error") -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": issue_type,
                   "details": {"coding": [{"system": ERROR_SYSTEM, "code": code}], "text": message},
                   "diagnostics": message}],
    }


def outcome_response(status: int, code: str, message: str, issue_type: str = "invalid",
                     headers: dict | None = None) -> Response:
    return Response(json.dumps(operation_outcome(code, message, issue_type)), status_code=status,
                    media_type=FHIR_JSON, headers=headers)


def bad_request(code: str, message: str) -> FhirError:
    return FhirError(400, code, message, "invalid")


def unprocessable(code: str, message: str) -> FhirError:
    return FhirError(422, code, message, "processing")


def not_found(type_: str, id_: str) -> FhirError:
    return FhirError(404, "RESOURCE_NOT_FOUND", f"{type_}/{id_} is not known", "not-found")
