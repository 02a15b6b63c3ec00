"""Protocol resources: OperationOutcome, Bundles (searchset, transaction-response), CapabilityStatement."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from twin.server.fhir.common import (
    ERROR_SYSTEM,
    OPERATION_DEFINITION,
    PROFILE,
    fhir_datetime,
)


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
