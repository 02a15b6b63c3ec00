"""Reads by id across the services: ``GET /{service}/{Type}/{id}``, with access control and audit."""

from __future__ import annotations

import functools

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server.errors import FHIR_JSON, not_found
from twin.server.service import SERVICE_OF, Service


async def read(self: Service, request: Request) -> Response:
    service, type_, id_ = (request.path_params[k] for k in ("service", "type", "id"))
    if SERVICE_OF.get(type_) != service:
        raise not_found(f"{service}/{type_}", id_)
    claims = self.claims(request)
    claims.require(f"{type_}.read")
    async with self.storage.transaction(one_write=True) as tx:
        row = await self.get_for(tx, claims, type_, id_)
        await self.audit(tx, claims, "R", None, [row.patient], type_, id_)
    return Response(row.body, media_type=FHIR_JSON, headers={"ETag": f'W/"{row.version}"'})



def routes(service: Service, guarded) -> list[Route]:
    return [Route("/{service}/{type}/{id}", guarded(functools.partial(read, service)), methods=["GET"])]
