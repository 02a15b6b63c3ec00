"""The service: routes of the FUT services under one ASGI app (Starlette).

Every request: token check (signature, expiry, realm) → permission → token context → work →
audit row. Every error is an OperationOutcome (:mod:`twin.server.errors`). Paths follow the FUT
services: ``/patient``, ``/careplan``, ``/measurement``, ``/task``, ``/organization`` and the
Keycloak-style token endpoint ``/auth/realms/{realm}/protocol/openid-connect/token``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import urllib.parse
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from twin.server import auth
from twin.server import fhir_resources as fr
from twin.server.errors import FHIR_JSON, FhirError, bad_request, not_found, outcome_response
from twin.server.settings import Settings
from twin.server.storage import Filter, Storage
from twin.server.submission import check_submission, parse_submission, store_rows
from twin.server.triage_worker import TriageWorker

SERVICE_OF = {"Patient": "patient", "Communication": "patient", "EpisodeOfCare": "careplan", "CarePlan": "careplan",
              "ServiceRequest": "careplan", "Observation": "measurement", "QuestionnaireResponse": "measurement",
              "Provenance": "measurement", "Task": "task", "ClinicalImpression": "task", "Organization": "organization",
              "CareTeam": "organization", "Practitioner": "organization", "PractitionerRole": "organization",
              "Questionnaire": "questionnaire"}
MAX_COUNT = 200  # page size cap, as the FUT careplan server's ~200
DEFAULT_COUNT = 50


def password_hash(username: str, password: str) -> str:
    """Seeded test accounts only: salted SHA-256 is enough to keep passwords out of the database."""
    return hashlib.sha256(f"twin:{username}:{password}".encode()).hexdigest()


def fhir_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type=FHIR_JSON, headers=headers)


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
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad_request("REQUEST_MALFORMED_JSON", f"the body is not valid JSON: {exc}") from None


class Service:
    """The state one worker process holds: settings, storage, tokens, triage worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.refs = fr.Refs(settings.base_url)
        self.storage = Storage.connect(settings.database)
        self.tokens = auth.TokenService(auth.derive_keys(settings.secret), self.refs.url,
                                        issuer=f"{settings.base_url}/auth")
        self.triage = TriageWorker(self.storage, self.refs)

    # -------------------------------------------------------------------------------- helpers
    def claims(self, request: Request, realm: str | None = None) -> auth.Claims:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        return self.tokens.verify(token, realm)

    async def audit(self, tx, claims: auth.Claims, action: str, subtype: str | None, patients, resource_type: str,
                    resource_id: str | None = None, query: str | None = None) -> None:
        """One audit row per patient touched (FUT: one AuditEvent per patient)."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        trace = uuid.uuid4().hex
        rows = [(now, trace, claims.user_type, claims.user_id, claims.context.organization_id, action, subtype, p,
                 resource_type, resource_id, query) for p in sorted({p for p in patients if p})]
        await tx.audit(rows)

    def check_row_access(self, claims: auth.Claims, row) -> None:
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

    # -------------------------------------------------------------------------------- routes
    async def health(self, request: Request) -> Response:
        async with self.storage.transaction() as tx:
            await tx.fetch("SELECT 1")
        return JSONResponse({"status": "ok", "database": self.settings.database.split("://")[0],
                             "triaged": self.triage.triaged})

    async def metadata(self, request: Request) -> Response:
        resources = {t: ["read", "search-type"] for t in SERVICE_OF}
        resources["Task"] = ["read", "search-type", "patch"]
        return fhir_response(fr.capability_statement(self.settings.base_url, resources,
                                                     ["$submit-measurement", "$get-patient-procedures",
                                                      "$search-measurements"]))

    async def token(self, request: Request) -> Response:
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
                context = await self._citizen_context(user_id)
            permissions = (auth.CITIZEN_PERMISSIONS if user_type == "PATIENT"
                           else auth.permissions_for_roles(json.loads(roles)))
            return JSONResponse(self.tokens.issue(user_type, user_id, realm, permissions, context))
        if grant == "refresh_token":
            context = auth.Context(**{k: self._context_id(form.get(k)) for k in
                                      ("organization_id", "care_team_id", "patient_id", "episode_of_care_id")})
            refresh_token = str(form.get("refresh_token", ""))
            allowed, team_org = await self._allowed_contexts(self.tokens.verify_refresh(refresh_token, realm))
            if context.care_team_id and not context.organization_id and context.care_team_id in team_org:
                # a care team lies in one organisation: the team alone names the context
                context = auth.Context(team_org[context.care_team_id], context.care_team_id, context.patient_id,
                                       context.episode_of_care_id)
            return JSONResponse(self.tokens.refresh(refresh_token, context, allowed, realm=realm))
        raise bad_request("AUTH_UNSUPPORTED_GRANT", f"grant_type {grant!r}: use password or refresh_token")

    async def _citizen_context(self, patient_id: str) -> auth.Context:
        async with self.storage.transaction() as tx:
            eps = await tx.search("EpisodeOfCare", [Filter("patient", "=", patient_id), Filter("status", "=", "active")],
                                  limit=1)
        return auth.Context(patient_id=patient_id, episode_of_care_id=eps[0].id if eps else None,
                            organization_id=eps[0].org if eps else None)

    def _context_id(self, value) -> str | None:
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

    async def _allowed_contexts(self, claims: auth.Claims):
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

    async def submit_measurement(self, request: Request) -> Response:
        claims = self.claims(request)
        claims.require("$submit-measurement")
        body = await read_json(request, self.settings)
        entries, idents = parse_submission(body, self.refs)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        # A parallel copy of the same submission that commits first makes our insert violate the
        # unique identifier index; `guarded` then runs this handler again, which answers 200 as a
        # resubmission. Either way the submission is stored once.
        async with self.storage.transaction() as tx:
            existing = await tx.get_by_ident(entries[0]["resource"]["resourceType"], idents[:1])
            if existing:
                return await self._already_submitted(tx, claims, idents)
            plan = await check_submission(entries, idents, claims, tx, self.refs)
            rows, locations = store_rows(plan, self.refs, now)
            await tx.insert(rows)
            outbox_id = str(uuid.uuid4())
            await tx.outbox_put(outbox_id, "triage", json.dumps({
                "patient": plan.patient_id, "episode": plan.episode_id, "team": plan.team_id, "org": plan.org_id,
                "resources": [[r.type, r.id] for r in rows if r.type != "Provenance"]}), now)
            await self.audit(tx, claims, "C", "$submit-measurement", [plan.patient_id], "Bundle")
        self.triage.wake.set()
        return fhir_response(fr.bundle_transaction_response([(loc, now, "201 Created") for loc in locations]), 201)

    async def _already_submitted(self, tx, claims: auth.Claims, idents: list[str]) -> Response:
        rows = []
        for t in ("Observation", "QuestionnaireResponse"):
            rows += await tx.get_by_ident(t, idents)
        by_ident = {r.ident: r for r in rows}
        if len(by_ident) != len(idents) or any(claims.user_type == "PATIENT" and r.patient != claims.context.patient_id
                                               for r in rows):
            raise FhirError(409, "MEASUREMENT_SUBMITMEASUREMENT_CONFLICTING_RESUBMISSION",
                            "some of these resources were submitted before, in another submission", "conflict")
        entries = [(f"{self.refs.url(by_ident[i].type, by_ident[i].id)}/_history/{by_ident[i].version}",
                    by_ident[i].last_updated, "200 OK") for i in idents]
        bundle = fr.bundle_transaction_response(entries)
        return fhir_response(bundle, 200, headers={"X-Twin-Duplicate": "true"})

    async def read(self, request: Request) -> Response:
        service, type_, id_ = (request.path_params[k] for k in ("service", "type", "id"))
        if SERVICE_OF.get(type_) != service:
            raise not_found(f"{service}/{type_}", id_)
        claims = self.claims(request)
        claims.require(f"{type_}.read")
        async with self.storage.transaction() as tx:
            row = await tx.get(type_, id_)
            if row is None:
                raise not_found(type_, id_)
            self.check_row_access(claims, row)
            await self.audit(tx, claims, "R", None, [row.patient], type_, id_)
        return Response(row.body, media_type=FHIR_JSON, headers={"ETag": f'W/"{row.version}"'})

    async def search_tasks(self, request: Request) -> Response:
        claims = self.claims(request)
        claims.require("Task.search")
        q = request.query_params
        count = _count(q)
        filters = []
        if claims.user_type == "PRACTITIONER":
            claims.require_context("CareTeam")
            responsible = q.get("responsible")
            team = self.refs.parse(responsible)[1] if responsible else None
            if team != claims.context.care_team_id:
                raise FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                                "Search parameters not matching security token context: responsible", "forbidden")
            filters.append(Filter("team", "=", team))
        else:
            raise FhirError(403, "SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE",
                            f"Operation not allowed for user type: {claims.user_type}", "forbidden")
        if q.get("status"):
            filters.append(Filter("status", "in", q.get("status").split(",")))
        order = [("priority", True), ("last_updated", False)] if q.get("_sort") == "-priority" else [("last_updated", False)]
        async with self.storage.transaction() as tx:
            rows = await tx.search("Task", filters, order, limit=count)
            entries = [{"fullUrl": self.refs.url("Task", r.id), "resource": json.loads(r.body), "mode": "match"}
                       for r in rows]
            if "Task:focus" in q.getlist("_include"):
                for r in rows:
                    focus = json.loads(r.body).get("focus", {}).get("reference")
                    if focus:
                        f = await tx.get(*self.refs.parse(focus))
                        if f is not None:
                            entries.append({"fullUrl": focus, "resource": json.loads(f.body), "mode": "include"})
            await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "Task", query=str(q))
        return fhir_response(fr.bundle_searchset(entries, None, str(request.url)))

    async def search_episodes(self, request: Request) -> Response:
        claims = self.claims(request)
        claims.require("EpisodeOfCare.search")
        q = request.query_params
        filters = []
        if claims.user_type == "PATIENT":
            patient = q.get("patient")
            if patient is None or self.refs.parse(patient)[1] != claims.context.patient_id:
                raise FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                                "Search parameters not matching security token context: patient", "forbidden")
            filters.append(Filter("patient", "=", claims.context.patient_id))
        else:
            claims.require_context("CareTeam")
            team = q.get("team")
            if team is None or self.refs.parse(team)[1] != claims.context.care_team_id:
                raise FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                                "Search parameters not matching security token context: team", "forbidden")
            filters.append(Filter("team", "=", claims.context.care_team_id))
        if q.get("status"):
            filters.append(Filter("status", "in", q.get("status").split(",")))
        async with self.storage.transaction() as tx:
            rows = await tx.search("EpisodeOfCare", filters, [("id", False)], limit=_count(q))
            await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "EpisodeOfCare", query=str(q))
        entries = [{"fullUrl": self.refs.url("EpisodeOfCare", r.id), "resource": json.loads(r.body), "mode": "match"}
                   for r in rows]
        return fhir_response(fr.bundle_searchset(entries, None, str(request.url)))


def _count(q) -> int:
    raw = q.get("_count", str(DEFAULT_COUNT))
    if not raw.isdigit() or not 0 < int(raw) <= MAX_COUNT:
        raise bad_request("SEARCH_INVALID_COUNT", f"_count must be an integer from 1 to {MAX_COUNT}, got {raw!r}")
    return int(raw)


def create_app(settings: Settings) -> Starlette:
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.storage.open()
        await service.storage.migrate()
        service.triage.start()
        yield
        await service.triage.stop()
        await service.storage.close()

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except FhirError as e:
                return outcome_response(e.status, e.code, e.message, e.issue_type)
            except auth.AuthError as e:
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                return outcome_response(e.status, e.code, e.message, "security" if e.status == 401 else "forbidden",
                                        headers)
            except _integrity_errors() as e:
                if handler.__name__ == "submit_measurement":
                    return await _retry_as_duplicate(handler, request)
                raise e
        return endpoint

    async def _retry_as_duplicate(handler, request):
        try:
            return await handler(request)
        except FhirError as e:
            return outcome_response(e.status, e.code, e.message, e.issue_type)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "REQUEST_UNKNOWN_PATH", 405: "REQUEST_METHOD_NOT_ALLOWED"}.get(exc.status_code, "REQUEST_ERROR")
        return outcome_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                                "not-supported" if exc.status_code == 405 else "not-found")

    async def server_error(request: Request, exc: Exception) -> Response:
        return outcome_response(500, "SERVER_ERROR", "the service failed to handle this request", "exception")

    s = service
    routes = [
        Route("/health", guarded(s.health)),
        Route("/metadata", guarded(s.metadata)),
        Route("/auth/realms/{realm}/protocol/openid-connect/token", guarded(s.token), methods=["POST"]),
        Route("/measurement/$submit-measurement", guarded(s.submit_measurement), methods=["POST"]),
        Route("/task/Task", guarded(s.search_tasks), methods=["GET"]),
        Route("/careplan/EpisodeOfCare", guarded(s.search_episodes), methods=["GET"]),
        Route("/{service}/{type}/{id}", guarded(s.read), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.service = service
    return app


def _integrity_errors() -> tuple[type[Exception], ...]:
    import sqlite3

    errors: list[type[Exception]] = [sqlite3.IntegrityError]
    try:
        import asyncpg

        errors.append(asyncpg.UniqueViolationError)
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(errors)
