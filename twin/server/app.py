"""The service: the FUT services' routes under one ASGI app (Starlette).

Every request: token check (signature, expiry, realm) → permission → token context → work → audit
row in the same transaction. Every error is an OperationOutcome (:mod:`twin.server.errors`): a
client mistake is a 4xx, an unexpected failure a 500 OperationOutcome without internals. Paths
follow the FUT services: ``/patient``, ``/careplan``, ``/measurement``, ``/task``,
``/organization`` and the Keycloak-style token endpoint (docs/API.md).
"""

from __future__ import annotations

import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from twin.server import (
    auth,
    gc_pauses,
    openapi,
    routes_audit,
    routes_auth,
    routes_careplan,
    routes_enrolment,
    routes_measurement,
    routes_organization,
    routes_patient,
    routes_read,
    routes_service_request,
    routes_task,
)
from twin.server import fhir as fr
from twin.server.admission import Admission
from twin.server.errors import FhirError, outcome_response
from twin.server.service import SERVICE_OF, Service, fhir_response
from twin.server.settings import Settings
from twin.server.storage import INTEGRITY_ERRORS

log = logging.getLogger("twin.server")
ROUTE_MODULES = (routes_auth, routes_measurement, routes_careplan, routes_enrolment, routes_service_request,
                 routes_task, routes_patient, routes_organization, routes_audit)  # all before the generic read





def guarded(handler, retry_on_conflict: bool = False):
    """Turn FhirError/AuthError into OperationOutcomes. With ``retry_on_conflict`` a unique-index
    violation (a parallel copy of the same submission committed first) runs the handler once more,
    which then finds the stored copy."""

    async def endpoint(request: Request) -> Response:
        if "\x00" in request.scope["path"] or b"%00" in request.scope["query_string"].lower():
            # no FHIR id, token or string holds NUL, and PostgreSQL text cannot: refuse it up front
            return outcome_response(400, "REQUEST_INVALID_CHARACTER", "the path or query holds a NUL character")
        for attempt in range(2):
            try:
                return await handler(request)
            except FhirError as e:
                return outcome_response(e.status, e.code, e.message, e.issue_type)
            except auth.AuthError as e:
                headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                return outcome_response(e.status, e.code, e.message, e.issue_type, headers)
            except INTEGRITY_ERRORS:
                if not retry_on_conflict or attempt:
                    raise
        raise AssertionError("unreachable")

    return endpoint


def create_app(settings: Settings) -> Starlette:
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await service.storage.open()
        await service.storage.migrate()
        service.triage.start()
        gc_pauses.RECORDER.install()
        gc_pauses.prepare_for_serving()  # full collections then skip everything start-up made
        yield
        await service.triage.stop()
        await service.storage.close()

    async def health(request: Request) -> Response:
        async with service.storage.transaction() as tx:
            await tx.fetch("SELECT 1")
        return JSONResponse({"status": "ok", "database": settings.database.split("://")[0],
                             "triaged": service.triage.triaged, "triage_failed": service.triage.failed,
                             "triage_busy_s": round(service.triage.busy_s, 6), "triage_batches": service.triage.batches,
                             "gc": gc_pauses.RECORDER.stats(),
                             "sqlite_commits": service.storage.commit_stats(),
                             "audit_index": await service.storage.audit_index_stats(),
                             "admission": service.admission.stats() if service.admission else None})

    async def metadata(request: Request) -> Response:
        resources = {t: ["read", "search-type"] for t in SERVICE_OF}
        resources["Task"] = ["read", "search-type", "patch"]
        resources["ClinicalImpression"] = ["read", "search-type", "create"]
        resources["Communication"] = ["read", "search-type", "create", "patch"]
        resources["ServiceRequest"] = ["read", "search-type", "update", "patch"]
        return fhir_response(fr.capability_statement(settings.base_url, resources,
                                                     ["$submit-measurement", "$get-patient-procedures",
                                                      "$search-measurements", "$create-episode-of-care"]))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "REQUEST_UNKNOWN_PATH", 405: "REQUEST_METHOD_NOT_ALLOWED"}.get(exc.status_code, "REQUEST_ERROR")
        return outcome_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                                "not-supported" if exc.status_code == 405 else "not-found")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return outcome_response(500, "SERVER_ERROR", "the service failed to handle this request", "exception")

    routes = [Route("/health", guarded(health)), Route("/metadata", guarded(metadata)),
              Route("/openapi.json", guarded(openapi.endpoint))]
    for module in (*ROUTE_MODULES, routes_read):
        routes += module.routes(service, guarded)
    shedding = Middleware(Admission, max_inflight=settings.max_inflight, max_wait_ms=settings.max_wait_ms,
                          max_queue=settings.max_queue, service=service)
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[shedding] if settings.load_shedding else [],
                    exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.service = service
    return app
