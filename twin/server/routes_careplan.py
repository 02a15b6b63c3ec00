"""The careplan service: EpisodeOfCare search — a citizen's own episode, a care team's roster."""

from __future__ import annotations

import functools
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import fhir_resources as fr
from twin.server.errors import FhirError
from twin.server.service import Service, fhir_response, page_count
from twin.server.storage import Filter


async def search_episodes(self: Service, request: Request) -> Response:
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
        rows = await tx.search("EpisodeOfCare", filters, [("id", False)], limit=page_count(q))
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "EpisodeOfCare", query=str(q))
    entries = [{"fullUrl": self.refs.url("EpisodeOfCare", r.id), "resource": json.loads(r.body), "mode": "match"}
               for r in rows]
    return fhir_response(fr.bundle_searchset(entries, None, str(request.url)))



def routes(service: Service, guarded) -> list[Route]:
    return [Route("/careplan/EpisodeOfCare", guarded(functools.partial(search_episodes, service)), methods=["GET"])]
