"""The token endpoint standing in for Keycloak: ``/auth/realms/{realm}/protocol/openid-connect/token``.

``grant_type=password`` logs a seeded account in (citizens in ``nemlogin``, practitioners in
``ehealth``); ``grant_type=refresh_token`` with ``organization_id``, ``care_team_id``,
``patient_id``, ``episode_of_care_id`` re-scopes the token to a context the user may act in (a
practitioner's care-team memberships, a citizen's own episodes), as FUT's clients do once per
patient or episode opened.
"""

from __future__ import annotations

import functools
import json
import urllib.parse

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from twin.server import auth
from twin.server.errors import FhirError, bad_request
from twin.server.service import MAX_COUNT, Service, password_hash
from twin.server.storage import Filter


async def token(self: Service, request: Request) -> Response:
    realm = request.path_params["realm"]
    if realm not in auth.REALMS:
        raise FhirError(404, "AUTH_UNKNOWN_REALM", f"realm {realm!r} is not known; use one of {', '.join(auth.REALMS)}",
                        "not-found")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise FhirError(415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
                        "the token endpoint takes application/x-www-form-urlencoded (OAuth 2.0)", "not-supported")
    raw = await request.body()
    if len(raw) > 16_384:
        raise FhirError(413, "REQUEST_TOO_LARGE", "token requests are limited to 16 KiB", "too-costly")
    try:
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise bad_request("REQUEST_MALFORMED_FORM", "the form is not UTF-8") from None
    if any("\x00" in k or "\x00" in v for k, v in form.items()):  # PostgreSQL text cannot hold NUL
        raise bad_request("REQUEST_MALFORMED_FORM", "the form holds a NUL character")
    grant = form.get("grant_type")
    if grant == "password":
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        async with self.storage.transaction() as tx:
            rows = await tx.fetch("SELECT realm, user_type, user_id, roles, password_hash FROM accounts "
                                  "WHERE username = ?", (username,))
        if not rows or rows[0][0] != realm or rows[0][4] != password_hash(username, password):
            raise FhirError(401, "AUTH_INVALID_CREDENTIALS", "unknown user or wrong password in this realm", "login")
        _realm, user_type, user_id, roles, _ = rows[0]
        context = auth.Context()
        if user_type == "PATIENT":
            context = await _citizen_context(self, user_id)
        permissions = (auth.CITIZEN_PERMISSIONS if user_type == "PATIENT"
                       else auth.permissions_for_roles(json.loads(roles)))
        return JSONResponse(self.tokens.issue(user_type, user_id, realm, permissions, context))
    if grant == "refresh_token":
        try:
            context = auth.Context(**{k: _context_id(self, form.get(k)) for k in
                                      ("organization_id", "care_team_id", "patient_id", "episode_of_care_id")})
        except ValueError as exc:  # a context id that is not a FHIR id
            raise bad_request("AUTH_INVALID_CONTEXT", str(exc)[:200]) from None
        refresh_token = str(form.get("refresh_token", ""))
        allowed, team_org = await _allowed_contexts(self, self.tokens.verify_refresh(refresh_token, realm))
        if context.care_team_id and not context.organization_id and context.care_team_id in team_org:
            # a care team lies in one organisation: the team alone names the context
            context = auth.Context(team_org[context.care_team_id], context.care_team_id, context.patient_id,
                                   context.episode_of_care_id)
        return JSONResponse(self.tokens.refresh(refresh_token, context, allowed, realm=realm))
    raise bad_request("AUTH_UNSUPPORTED_GRANT", f"grant_type {grant!r}: use password or refresh_token")

async def _citizen_context(self: Service, patient_id: str) -> auth.Context:
    async with self.storage.transaction() as tx:
        eps = await tx.search("EpisodeOfCare", [Filter("patient", "=", patient_id), Filter("status", "=", "active")],
                              limit=1)
    return auth.Context(patient_id=patient_id, episode_of_care_id=eps[0].id if eps else None,
                        organization_id=eps[0].org if eps else None)

def _context_id(self: Service, value) -> str | None:
    """A context parameter may be an id or an absolute reference."""
    if value in (None, ""):
        return None
    value = str(value)
    if "/" not in value:
        return value
    try:
        return self.refs.parse(value)[1]
    except ValueError:
        raise bad_request("AUTH_INVALID_CONTEXT", f"context parameter {value!r} is not an id or a reference") from None

async def _allowed_contexts(self: Service, claims: auth.Claims):
    """The database facts refresh() needs, loaded before the (synchronous) check."""
    memberships: set[tuple[str, str]] = set()
    episodes: dict[str, tuple] = {}
    async with self.storage.transaction() as tx:
        if claims is not None and claims.user_type == "PRACTITIONER":
            memberships = {(r[0], r[1]) for r in await tx.fetch(
                "SELECT org, care_team FROM memberships WHERE practitioner = ?", (claims.user_id,))}
        elif claims is not None and claims.user_type == "PATIENT":
            episodes = {r.id: (r.patient, r.team, r.org) for r in await tx.search(
                "EpisodeOfCare", [Filter("patient", "=", claims.user_id)], limit=MAX_COUNT)}

    def allowed(c: auth.Claims, ctx: auth.Context) -> bool:
        if c.user_type == "PATIENT":
            if ctx.patient_id not in (None, c.user_id):
                return False
            return ctx.episode_of_care_id is None or ctx.episode_of_care_id in episodes
        if c.user_type == "PRACTITIONER":
            if ctx.care_team_id is None:
                return ctx.organization_id is None or any(o == ctx.organization_id for o, _ in memberships)
            return (ctx.organization_id, ctx.care_team_id) in memberships
        return True

    return allowed, {team: org for org, team in memberships}



def routes(service: Service, guarded) -> list[Route]:
    return [Route("/auth/realms/{realm}/protocol/openid-connect/token", guarded(functools.partial(token, service)),
                  methods=["POST"])]
