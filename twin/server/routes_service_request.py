"""The careplan service's ServiceRequest update: a clinician changes a citizen's thresholds.

How FUT does it (reference/fut-infrastructure.md §5; IG ehealth-servicerequest, ehealth-ext-referenceRange)
--------------------------------------------------------------------------------------------------------
A citizen's alarm thresholds live on each of their ServiceRequests as ``ehealth-referenceRange``
extensions {low, high, type}: type ``RELRAL`` is the range outside which a value is **red**,
``RELGAL`` the range outside which it is **yellow**. They start as the plan's standard and are
individualised by the care team (a citizen whose SpO2 is 89 % every day should not be yellow every
day). The triage reads them from the ServiceRequest each time a measurement arrives, so a change
applies to the next submission. FUT's careplan service allows ``update`` of a ServiceRequest.

What the twin does
------------------
``PUT /careplan/ServiceRequest/{id}`` with the whole resource, or ``PATCH`` with a JSON Patch
(RFC 6902: add / remove / replace / test; e.g. ``replace /extension/3/extension/0/valueQuantity/value``).
Either way the result must differ from the stored resource **only in its reference ranges** —
what to measure and when is the plan's business, not a threshold change (422
``SERVICEREQUEST_UPDATE_NOT_ALLOWED`` naming the element). The new ranges are checked:

* types RELRAL and RELGAL only, at most one of each, each with ``low`` and/or ``high`` as a
  ``valueQuantity`` in the measurement's UCUM unit;
* ``low < high`` within a range, every bound inside what the device can show
  (:data:`twin.server.submission.POSSIBLE`);
* red outside yellow: ``red low ≤ yellow low ≤ yellow high ≤ red high``;
* a questionnaire's ServiceRequest has no ranges.

A violation is 422 ``SERVICEREQUEST_INVALID_REFERENCE_RANGE``. Optimistic concurrency as for Task:
``If-Match: W/"<version>"`` (the ETag of the read) must name the stored version, else 412; the
answer carries the new ETag. Access: permission ``ServiceRequest.update`` (PUT) or
``ServiceRequest.patch`` (PATCH) — care-team role ``monitoring_adjuster`` — and a token scoped
to the care team that follows the citizen's episode (another team: 403; citizens have neither
permission). Audit: ``U``.
"""

from __future__ import annotations

import copy
import functools
import json
import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.rules import MEASUREMENTS
from twin.server import auth
from twin.server import fhir as fr
from twin.server.errors import bad_request, unprocessable
from twin.server.routes_task import (
    PatchOp,
    check_if_match,
    read_patch,
    store_new_version,
    version_headers,
    with_retry_on_lost_race,
)
from twin.server.service import Service, fhir_response, now_iso, read_json
from twin.server.storage import Row
from twin.server.submission import POSSIBLE

CODE = "SERVICEREQUEST_"
RANGE_TYPES = {"RELRAL": "red", "RELGAL": "yellow"}


# ------------------------------------------------------------------------------ JSON Patch apply
def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _parent(doc: object, path: str, k: int) -> tuple[object, str]:
    parts = _pointer(path)
    if not parts:
        raise unprocessable(f"{CODE}PATCH_NOT_ALLOWED", f"operation [{k}]: the whole resource cannot be replaced")
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise unprocessable("REQUEST_PATCH_PATH_NOT_FOUND", f"operation [{k}]: {path} does not exist") from None
    return node, parts[-1]


def apply_json_patch(doc: dict, ops: list[PatchOp]) -> dict:
    """``doc`` with the RFC 6902 operations add / remove / replace / test applied (a new object).
    A path that does not exist, or a failed ``test``, is a 422; move and copy are not taken."""
    out = copy.deepcopy(doc)
    for k, op in enumerate(ops):
        if op.op in ("move", "copy"):
            raise unprocessable(f"{CODE}PATCH_NOT_ALLOWED", f"operation [{k}]: {op.op} is not supported here")
        parent, key = _parent(out, op.path, k)
        try:
            if isinstance(parent, list):
                index = len(parent) if key == "-" and op.op == "add" else int(key)
                if not 0 <= index <= len(parent) - (op.op != "add"):
                    raise IndexError(index)
                if op.op == "add":
                    parent.insert(index, copy.deepcopy(op.value))
                elif op.op == "remove":
                    del parent[index]
                elif op.op == "replace":
                    parent[index] = copy.deepcopy(op.value)
                elif parent[index] != op.value:
                    raise AssertionError
            elif isinstance(parent, dict):
                if op.op in ("remove", "replace", "test") and key not in parent:
                    raise KeyError(key)
                if op.op in ("add", "replace"):
                    parent[key] = copy.deepcopy(op.value)
                elif op.op == "remove":
                    del parent[key]
                elif parent[key] != op.value:
                    raise AssertionError
            else:
                raise TypeError
        except AssertionError:
            raise unprocessable("REQUEST_PATCH_TEST_FAILED", f"operation [{k}]: test of {op.path} failed") from None
        except (KeyError, IndexError, ValueError, TypeError):
            raise unprocessable("REQUEST_PATCH_PATH_NOT_FOUND", f"operation [{k}]: {op.path} does not exist") from None
    return out


# ---------------------------------------------------------------------------- what may change
def _is_range(ext: object) -> bool:
    return isinstance(ext, dict) and ext.get("url") == fr.EXT_REFERENCE_RANGE


def _without_ranges(resource: dict) -> dict:
    """The resource minus meta and its reference ranges: what a threshold change must leave alone."""
    out = {k: v for k, v in resource.items() if k != "meta"}
    out["extension"] = [e for e in resource.get("extension") or [] if not _is_range(e)]
    return out


def _changed_element(stored: dict, new: dict) -> str | None:
    a, b = _without_ranges(stored), _without_ranges(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return key
    return None


def _bound(part: dict, unit: str, what: str) -> float:
    q = part.get("valueQuantity")
    value = q.get("value") if isinstance(q, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"{what} needs a valueQuantity with a numeric value")
    if q.get("code") != unit or q.get("system") != fr.UCUM:
        raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE",
                            f"{what} must be in UCUM '{unit}', got {q.get('system')}|{q.get('code')}")
    return float(value)


def check_ranges(resource: dict) -> None:
    """422 unless the reference ranges are a valid threshold set for the request's measurement."""
    ranges = [e for e in resource.get("extension") or [] if _is_range(e)]
    measurement = fr.service_request_measurement(resource)
    if measurement == "questionnaire":
        if ranges:
            raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", "a questionnaire's ServiceRequest has no ranges")
        return
    unit = MEASUREMENTS[measurement].unit_ucum
    device_lo, device_hi = POSSIBLE[measurement]
    seen = set()
    for ext in ranges:
        parts = {p.get("url"): p for p in ext.get("extension") or [] if isinstance(p, dict)}
        if set(parts) - {"low", "high", "type"}:
            raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"unknown parts {sorted(set(parts) - {'low', 'high', 'type'})}")
        codings = (parts.get("type", {}).get("valueCodeableConcept") or {}).get("coding") or [{}]
        code = codings[0].get("code") if codings[0].get("system") == fr.REFERENCE_RANGE_TYPE_SYSTEM else None
        if code not in RANGE_TYPES or code in seen:
            raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"each range has type RELRAL (red) or RELGAL "
                                f"(yellow) of {fr.REFERENCE_RANGE_TYPE_SYSTEM}, at most one of each")
        seen.add(code)
        what = f"the {RANGE_TYPES[code]} range ({code})"
        bounds = {b: _bound(parts[b], unit, f"{what} {b}") for b in ("low", "high") if b in parts}
        if not bounds:
            raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"{what} needs a low or a high")
        for b, v in bounds.items():
            if not device_lo <= v <= device_hi:
                raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"{what} {b} {v:g} {unit} lies outside what "
                                    f"the device shows ({device_lo:g}-{device_hi:g})")
        if len(bounds) == 2 and not bounds["low"] < bounds["high"]:
            raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"{what}: low {bounds['low']:g} must be below "
                                f"high {bounds['high']:g}")
    try:
        fr.ranges_from_service_request(resource)  # ReferenceRanges checks red outside yellow
    except ValueError as exc:
        raise unprocessable(f"{CODE}INVALID_REFERENCE_RANGE", f"the red range must lie outside the yellow: {exc}") from None


# ------------------------------------------------------------------------------------ the routes
async def _update(self: Service, request: Request, claims: auth.Claims, make_new) -> Response:
    """Shared by PUT and PATCH: ``make_new(stored body) → new body``, then the checks and the write."""
    id_ = request.path_params["id"]

    async def work() -> Row:
        now = now_iso()
        async with self.storage.transaction() as tx:
            row = await self.get_for(tx, claims, "ServiceRequest", id_)  # the episode's team, nobody else
            check_if_match(request, row)
            stored = json.loads(row.body)
            new = make_new(stored)
            changed = _changed_element(stored, new)
            if changed is not None:
                raise unprocessable(f"{CODE}UPDATE_NOT_ALLOWED", f"only the reference ranges of a ServiceRequest may "
                                    f"change here; {changed} differs from the stored version")
            check_ranges(new)
            new["meta"] = stored.get("meta") or {}
            row = await store_new_version(tx, row, new, now, row.status)
            await self.audit(tx, claims, "U", request.method.lower(), [row.patient], "ServiceRequest", id_)
        return row

    row = await with_retry_on_lost_race(request, work)
    return fhir_response(json.loads(row.body), 200, version_headers(row))


def _claims(self: Service, request: Request, permission: str) -> auth.Claims:
    claims = self.claims(request)
    claims.require(permission)
    claims.require_user_type("PRACTITIONER")
    claims.require_context("CareTeam")
    return claims


async def put_service_request(self: Service, request: Request) -> Response:
    claims = _claims(self, request, "ServiceRequest.update")
    body = await read_json(request, self.settings)
    if not isinstance(body, dict) or body.get("resourceType") != "ServiceRequest":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", "PUT /careplan/ServiceRequest/{id} expects a ServiceRequest")
    if body.get("id") != request.path_params["id"]:
        raise bad_request("REQUEST_ID_MISMATCH", f"the body's id {str(body.get('id'))[:64]!r} is not the id in the URL")
    return await _update(self, request, claims, lambda _stored: copy.deepcopy(body))


async def patch_service_request(self: Service, request: Request) -> Response:
    claims = _claims(self, request, "ServiceRequest.patch")
    ops = await read_patch(self, request)
    for k, op in enumerate(ops):
        if op.path == "/meta" or op.path.startswith("/meta/"):
            raise unprocessable(f"{CODE}PATCH_NOT_ALLOWED", f"operation [{k}] ({op.op} {op.path}): meta is the server's")
    return await _update(self, request, claims, lambda stored: apply_json_patch(stored, ops))


def routes(service: Service, guarded) -> list[Route]:
    def r(handler, method):
        return Route("/careplan/ServiceRequest/{id}", guarded(functools.partial(handler, service)), methods=[method])

    return [r(put_service_request, "PUT"), r(patch_service_request, "PATCH")]
