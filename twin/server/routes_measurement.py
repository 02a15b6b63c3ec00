"""The measurement service: ``$submit-measurement`` (see :mod:`twin.server.submission`).

A resubmission of the same bundle (same entry identifiers) stores nothing new and is answered
200 with the original locations and ``X-Twin-Duplicate: true``; a parallel copy that loses the
race on the unique identifier index is answered the same way (:func:`twin.server.app.guarded`
runs the handler again).
"""

from __future__ import annotations

import functools
import json
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth
from twin.server import fhir_resources as fr
from twin.server.errors import FhirError
from twin.server.service import Service, fhir_response, now_iso, read_json
from twin.server.submission import check_submission, parse_submission, store_rows


async def submit_measurement(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("$submit-measurement")
    body = await read_json(request, self.settings)
    entries, idents = parse_submission(body, self.refs)
    now = now_iso()
    # A parallel copy of the same submission that commits first makes our insert violate the
    # unique identifier index; `guarded` then runs this handler again, which answers 200 as a
    # resubmission. Either way the submission is stored once.
    async with self.storage.transaction() as tx:
        existing = await tx.get_by_ident(entries[0]["resource"]["resourceType"], idents[:1])
        if existing:
            return await _already_submitted(self, tx, claims, idents)
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

async def _already_submitted(self: Service, tx, claims: auth.Claims, idents: list[str]) -> Response:
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



def routes(service: Service, guarded) -> list[Route]:
    return [Route("/measurement/$submit-measurement", guarded(functools.partial(submit_measurement, service),
                                                              retry_on_conflict=True), methods=["POST"])]
