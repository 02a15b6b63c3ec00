"""The task service: the clinicians' worklist (``Task?responsible=…&status=…&_sort=-priority``).

The search must name the care team of the token (FUT: searches carry every context dimension of
the token, else 403). ``_include=Task:focus`` adds the triage ClinicalImpression each Task points to.
"""

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


async def search_tasks(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Task.search")
    q = request.query_params
    count = page_count(q)
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



def routes(service: Service, guarded) -> list[Route]:
    return [Route("/task/Task", guarded(functools.partial(search_tasks, service)), methods=["GET"])]
