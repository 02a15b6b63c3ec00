"""The state one worker process holds, and the helpers every route uses.

A route module (``routes_*.py``, one per FUT service) exports ``routes(service) -> list[Route]``;
its handlers take ``(service, request)``. :mod:`twin.server.app` puts them together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
import uuid
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response

from twin.server import auth, jsonfast
from twin.server import fhir as fr
from twin.server.errors import FHIR_JSON, FhirError, bad_request, not_found
from twin.server.settings import Settings
from twin.server.storage import AuditRecord, Listed, Row, Storage
from twin.server.triage_worker import TriageWorker

SERVICE_OF = {"Patient": "patient", "Communication": "patient", "EpisodeOfCare": "careplan", "CarePlan": "careplan",
              "ServiceRequest": "careplan", "Condition": "careplan", "Observation": "measurement",
              "QuestionnaireResponse": "measurement", "Provenance": "measurement", "Task": "task", "ClinicalImpression": "task", "Organization": "organization",
              "CareTeam": "organization", "Practitioner": "organization", "PractitionerRole": "organization",
              "Questionnaire": "questionnaire"}
MAX_COUNT = 200  # page size cap, as the FUT careplan server's ~200
DEFAULT_COUNT = 50


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def audit_record(claims: auth.Claims, action: str, subtype: str | None, patients, resource_type: str,
                 resource_id: str | None = None, query: str | None = None) -> AuditRecord | None:
    """What the audit keeps of a request (action C/R/U/E, who, for which organisation, what) and the
    patients it touched; None when it touched none."""
    touched = sorted({p for p in patients if p})
    if not touched:
        return None
    return AuditRecord((now_iso(), uuid.uuid4().hex, claims.user_type, claims.user_id, claims.context.organization_id,
                        action, subtype, resource_type, resource_id, query), touched)


def password_hash(username: str, password: str) -> str:
    """Seeded test accounts only: salted SHA-256 is enough to keep passwords out of the database."""
    return hashlib.sha256(f"twin:{username}:{password}".encode()).hexdigest()


def fhir_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(jsonfast.dumpb(body), status_code=status, media_type=FHIR_JSON, headers=headers)


async def read_json(request: Request, settings: Settings) -> object:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
        raise FhirError(413, "REQUEST_TOO_LARGE", f"request bodies are limited to {settings.max_body_bytes} bytes",
                        "too-costly")
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise FhirError(413, "REQUEST_TOO_LARGE", f"request bodies are limited to {settings.max_body_bytes} bytes",
                        "too-costly")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in ("application/fhir+json", "application/json", "application/json-patch+json"):
        raise FhirError(415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
                        f"content type {ctype!r} is not supported; send application/fhir+json", "not-supported")
    try:
        return jsonfast.loads(body)
    except (ValueError, RecursionError) as exc:  # msgspec.DecodeError is a ValueError; so is bad UTF-8
        raise bad_request("REQUEST_MALFORMED_JSON", f"the body is not valid JSON: {exc}") from None


def page_count(q) -> int:
    """The ``_count`` search parameter, bounded."""
    raw = q.get("_count", str(DEFAULT_COUNT))
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= MAX_COUNT:  # isdigit alone takes "²", "٣"
        raise bad_request("SEARCH_INVALID_COUNT", f"_count must be an integer from 1 to {MAX_COUNT}, got {raw!r}")
    return int(raw)


def page_offset(q) -> int:
    raw = q.get("_offset", "0")
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 1_000_000:
        raise bad_request("SEARCH_INVALID_OFFSET", f"_offset must be an integer from 0 to 1000000, got {raw!r}")
    return int(raw)


def page_url(request: Request, offset: int) -> str:
    """``request``'s URL at another ``_offset``: a search Bundle's ``next`` link. ``multi_items``
    keeps repeated parameters (``date=ge…&date=le…``) that a dict would drop."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"] + [("_offset", str(offset))]
    return str(request.url.replace(query=urllib.parse.urlencode(items)))


class Service:
    """The state one worker process holds: settings, storage, tokens, triage worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.refs = fr.Refs(settings.base_url)
        self.storage = Storage.connect(settings.database)
        self.tokens = auth.TokenService(auth.derive_keys(settings.secret), self.refs.url,
                                        issuer=f"{settings.base_url}/auth")
        self.triage = TriageWorker(self.storage, self.refs, nightly_jobs=settings.nightly_jobs)
        self.admission = None  # the load-shedding middleware registers itself (twin.server.admission)

    def claims(self, request: Request, realm: str | None = None) -> auth.Claims:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        return self.tokens.verify(token, realm)

    async def audit(self, tx, claims: auth.Claims, action: str, subtype: str | None, patients, resource_type: str,
                    resource_id: str | None = None, query: str | None = None) -> None:
        """One audit row per patient touched (FUT: one AuditEvent per patient), in the request's transaction."""
        record = audit_record(claims, action, subtype, patients, resource_type, resource_id, query)
        if record is not None:
            await tx.audit(*record)

    async def require_membership(self, tx, claims: auth.Claims) -> None:
        """403 ``SECURITY_TOKEN_CONTEXT_NOT_ALLOWED`` unless a practitioner's token context still holds.

        A token is scoped once, at the token endpoint, against the ``memberships`` table; it then
        lives for minutes. When an organisation's administrator removes a practitioner from a care
        team (``DELETE /organization/PractitionerRole/{id}``), access must end at once, not when the
        token expires (JWTs are not revocable). So every request of a PRACTITIONER re-checks, in
        its own transaction, the rule re-scoping applied: a care-team context needs the
        (practitioner, care team) membership; an organisation-only context needs some membership
        in that organisation. Citizens and system users pass (their context is not a membership).
        One primary-key lookup per request.
        """
        if claims.user_type != "PRACTITIONER":
            return
        ctx = claims.context
        if ctx.care_team_id is not None:
            sql, params = "SELECT 1 FROM memberships WHERE practitioner = ? AND care_team = ?", [claims.user_id,
                                                                                               ctx.care_team_id]
            if ctx.organization_id is not None:
                sql, params = sql + " AND org = ?", [*params, ctx.organization_id]
        elif ctx.organization_id is not None:
            sql, params = "SELECT 1 FROM memberships WHERE practitioner = ? AND org = ?", [claims.user_id,
                                                                                         ctx.organization_id]
        else:
            return  # no context: nothing was granted by a membership, nothing to withdraw
        if not await tx.fetch(sql + " LIMIT 1", params):
            raise auth.AuthError.of("SECURITY_TOKEN_CONTEXT_NOT_ALLOWED", ctx.describe())

    async def get_for(self, tx, claims: auth.Claims, type_: str, id_: str) -> Row:
        """A stored resource the token may see: the membership still holds, the resource exists
        (else 404), and it lies in the token's compartment (else 403). Reads and updates start here."""
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        row = await tx.get(type_, id_)
        if row is None:
            raise not_found(type_, id_)
        self.check_row_access(claims, row)
        return row

    def check_row_access(self, claims: auth.Claims, row: Row) -> None:
        """A citizen sees their own data; a practitioner the data of the care team in the token."""
        ctx = claims.context
        if claims.user_type == "PATIENT":
            ok = row.patient is not None and row.patient == ctx.patient_id
        elif claims.user_type == "PRACTITIONER":
            ok = ctx.care_team_id is not None and (row.team == ctx.care_team_id or row.type in ("CareTeam", "Organization")
                                                   and row.org == ctx.organization_id)
        else:
            ok = True
        if not ok:
            raise FhirError(403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
                            f"Resource not matching security token context: {row.type}/{row.id}", "forbidden")

    def ref_id(self, value: str | None, expected_type: str, param: str) -> str | None:
        """The id in a reference search parameter (``Type/id`` or an absolute URL); None if absent."""
        if value in (None, ""):
            return None
        try:
            type_, id_ = self.refs.parse(value) if "/" in value else (expected_type, value)
        except ValueError:
            raise bad_request("SEARCH_INVALID_REFERENCE", f"{param}={value!r} is not a reference") from None
        if type_ != expected_type:
            raise bad_request("SEARCH_INVALID_REFERENCE", f"{param} must reference a {expected_type}, got {value!r}")
        return id_

    def searchset(self, request: Request, rows: Sequence[Row | Listed], included: Sequence[Row | Listed] = (),
                  total: int | None = None, next_offset: int | None = None) -> Response:
        url = self.refs.stored_url
        entries = [{"fullUrl": url(r.type, r.id), "resource": jsonfast.raw(r.body), "mode": "match"} for r in rows]
        entries += [{"fullUrl": url(r.type, r.id), "resource": jsonfast.raw(r.body), "mode": "include"}
                    for r in included]
        next_url = page_url(request, next_offset) if next_offset is not None else None
        return fhir_response(fr.bundle_searchset(entries, total, str(request.url), next_url))
