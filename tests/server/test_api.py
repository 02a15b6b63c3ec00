"""The real API over HTTP on SQLite and PostgreSQL: login, submission, triage, worklist, access, errors.

Every resource the server returns is validated with the R4B models of ``fhir.resources``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.operationoutcome import OperationOutcome

from twin.server import fhir as fr

TOKEN_PATH = "/auth/realms/{realm}/protocol/openid-connect/token"
MEASURES = ("spo2", "pulse", "weight", "sbp", "dbp")  # pilot-100 lives in Aalborg: blood pressure is in the kit


def login(client, realm: str, username: str, password: str = "twin") -> dict:
    r = client.post(TOKEN_PATH.format(realm=realm), data={"grant_type": "password", "username": username,
                                                           "password": password, "client_id": "test"})
    assert r.status_code == 200, r.text
    return r.json()


def rescope(client, realm: str, tokens: dict, **context) -> dict:
    r = client.post(TOKEN_PATH.format(realm=realm), data={"grant_type": "refresh_token",
                                                           "refresh_token": tokens["refresh_token"], **context})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(tokens: dict) -> dict:
    return {"Authorization": f"Bearer {tokens['access_token']}", "Content-Type": "application/fhir+json"}


def outcome(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    OperationOutcome.model_validate(body)
    assert body["issue"][0]["details"]["coding"][0]["code"] == code, body


def submission(server, citizen: int, values: dict, answers: dict, session: str | None = None) -> dict:
    refs = fr.Refs(server.base_url)
    srs = {m: f"sr-{citizen}-{m}" for m in values} | {"questionnaire": f"sr-{citizen}-questionnaire"}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return fr.submission(refs, session or str(uuid.uuid4()), f"p-{citizen}", f"e-{citizen}", srs, "q-copd",
                         values, answers, now)


GREEN = {"spo2": 95, "pulse": 80, "weight": 72.0, "sbp": 130, "dbp": 80}


@pytest.fixture(scope="module")
def citizen(server):
    with server.client() as c:
        return login(c, "nemlogin", "citizen-0")


def test_health_and_metadata(server):
    with server.client() as c:
        health = c.get("/health").json()
        assert health["status"] == "ok"
        # the counters operators and the capacity pipeline read: triage cost, GC pauses, SQLite commits
        assert health["triage_busy_s"] >= 0 and health["triage_batches"] >= 0
        assert len(health["gc"]["collections"]) == 3 and health["gc"]["frozen_objects"] > 0
        if health["database"] == "sqlite":
            assert health["sqlite_commits"]["commits"] > 0  # its start-up and logins wrote already
            assert health["audit_index"]["behind_requests"] >= 0 and health["audit_index"]["copied_requests"] >= 0
        else:
            assert health["sqlite_commits"] is None and health["audit_index"] is None
        r = c.get("/metadata")
        assert r.status_code == 200
        CapabilityStatement.model_validate(r.json())


def test_citizen_token_carries_patient_and_episode(server, citizen):
    with server.client() as c:
        r = c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-0", "status": "active"},
                  headers=bearer(citizen))
        assert r.status_code == 200, r.text
        bundle = r.json()
        Bundle.model_validate(bundle)
        assert [e["resource"]["id"] for e in bundle["entry"]] == ["e-0"]
        EpisodeOfCare.model_validate(bundle["entry"][0]["resource"])


def test_submit_is_stored_once_and_triaged(server, citizen):
    body = submission(server, 0, {"spo2": 84, "pulse": 80}, {"dyspnoea": True, "cough": True, "sputum": False})
    with server.client() as c:
        r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen))
        assert r.status_code == 201, r.text
        response = r.json()
        Bundle.model_validate(response)
        assert response["type"] == "transaction-response"
        assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 3
        again = c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen))
        assert again.status_code == 200 and again.headers["X-Twin-Duplicate"] == "true"
        assert [e["response"]["location"] for e in again.json()["entry"]] == \
            [e["response"]["location"] for e in response["entry"]]
        obs_url = response["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
        obs = c.get(obs_url.replace(server.base_url, ""), headers=bearer(citizen))
        assert obs.status_code == 200 and obs.json()["valueQuantity"]["value"] == 84

        # The nurse of citizen 0's team sees a red Task at the top of the worklist.
        team = _team_of(c, citizen)
        nurse = rescope(c, "ehealth", login(c, "ehealth", f"nurse-{team}-0"), organization_id=None,
                        care_team_id=f"ct-{team}")
        deadline = time.monotonic() + 10
        while True:  # triage runs off the request path: wait for the real worker, bounded
            r = c.get("/task/Task", params={"responsible": f"CareTeam/ct-{team}", "status": "ready",
                                            "_sort": "-priority", "_include": "Task:focus"}, headers=bearer(nurse))
            assert r.status_code == 200, r.text
            tasks = [e["resource"] for e in r.json().get("entry", []) if e["resource"]["resourceType"] == "Task"]
            if tasks or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        Bundle.model_validate(r.json())
        assert tasks and tasks[0]["priority"] == "asap"
        impressions = [e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "ClinicalImpression"]
        assert impressions and impressions[0]["code"]["coding"][0]["code"] == "TriagingResult"


def _team_of(c, citizen) -> str:
    r = c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-0"}, headers=bearer(citizen))
    team_ref = r.json()["entry"][0]["resource"]["team"][0]["reference"]
    return team_ref.rsplit("/ct-", 1)[1]


@pytest.mark.parametrize("change,status,code", [
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"]["valueQuantity"].update(value=150), 422,
     "MEASUREMENT_SUBMITMEASUREMENT_IMPOSSIBLE_VALUE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"]["valueQuantity"].update(code="kg"), 422,
     "MEASUREMENT_SUBMITMEASUREMENT_INVALID_UNIT"),
    (lambda b: b["parameter"][0]["resource"]["entry"][1]["resource"]["subject"].update(reference="Patient/p-1"), 422,
     "MEASUREMENT_SUBMITMEASUREMENT_INPUT_FOR_DIFFERENT_PATIENTS"),
    (lambda b: b["parameter"][0]["resource"].update(entry=[]), 400, "MEASUREMENT_SUBMITMEASUREMENT_EMPTY_INPUT_BUNDLE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"].update(status="preliminary"), 422,
     "MEASUREMENT_SUBMITMEASUREMENT_INVALID_STATUS"),
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"].update(effectiveDateTime="2099-01-01T00:00:00Z"),
     422, "MEASUREMENT_SUBMITMEASUREMENT_EFFECTIVE_IN_FUTURE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"]["basedOn"][0].update(
        reference="ServiceRequest/sr-0-weight"), 422, "MEASUREMENT_SUBMITMEASUREMENT_INVALID_OBSERVATION_CODE"),
    (lambda b: b.update(resourceType="Bundle"), 400, "REQUEST_WRONG_RESOURCE_TYPE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][1]["resource"]["extension"][0]["valueReference"].update(
        reference="EpisodeOfCare/e-1"), 422, "MEASUREMENT_SUBMITMEASUREMENT_INPUT_NOT_PART_OF_SAME_EPISODEOFCARE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][0]["resource"]["basedOn"][0].update(
        reference="ServiceRequest/sr-nobody"), 422, "REQUEST_UNKNOWN_REFERENCE"),
    (lambda b: b["parameter"][0]["resource"]["entry"][1].update(
        fullUrl=b["parameter"][0]["resource"]["entry"][0]["fullUrl"]), 400,
     "MEASUREMENT_SUBMITMEASUREMENT_DUPLICATE_FULLURL"),
])
def test_bad_submissions_are_refused_and_store_nothing(server, citizen, change, status, code):
    body = submission(server, 0, dict(GREEN), {"dyspnoea": False})
    change(body)
    with server.client() as c:
        r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen))
        outcome(r, status, code)
        # Nothing stored: the valid remainder of the same bundle is still accepted as new.
        good = submission(server, 0, dict(GREEN), {"dyspnoea": False})
        assert c.post("/measurement/$submit-measurement", json=good, headers=bearer(citizen)).status_code == 201


def test_malformed_json_wrong_content_type_and_size(server, citizen):
    with server.client() as c:
        h = bearer(citizen)
        outcome(c.post("/measurement/$submit-measurement", content=b'{"resourceType": "Param', headers=h), 400,
                "REQUEST_MALFORMED_JSON")
        outcome(c.post("/measurement/$submit-measurement", content=b"x", headers={**h, "Content-Type": "text/plain"}),
                415, "REQUEST_UNSUPPORTED_MEDIA_TYPE")
        big = submission(server, 0, dict(GREEN), {"dyspnoea": False})
        entry = big["parameter"][0]["resource"]["entry"][0]
        big["parameter"][0]["resource"]["entry"] = [
            {**entry, "fullUrl": f"urn:uuid:{uuid.uuid4()}"} for _ in range(101)]
        outcome(c.post("/measurement/$submit-measurement", json=big, headers=h), 413, "TRANSACTION_TOO_MANY_ENTRIES")
        outcome(c.get("/nowhere", headers=h), 404, "REQUEST_UNKNOWN_PATH")
        outcome(c.delete("/measurement/$submit-measurement", headers=h), 405, "REQUEST_METHOD_NOT_ALLOWED")


def test_tokens_are_checked(server, citizen):
    with server.client() as c:
        outcome(c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-0"}), 401, "SECURITY_TOKEN_MISSING")
        header, payload, sig = citizen["access_token"].split(".")
        outcome(c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-0"},
                      headers={"Authorization": f"Bearer {header}.{payload}.{sig[:-2]}xx"}), 401, "SECURITY_TOKEN_INVALID")
        outcome(c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-0"},
                      headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}), 401, "SECURITY_TOKEN_INVALID")
        r = c.post(TOKEN_PATH.format(realm="nemlogin"), data={"grant_type": "password", "username": "citizen-0",
                                                             "password": "wrong"})
        outcome(r, 401, "AUTH_INVALID_CREDENTIALS")


def test_access_follows_the_token_context(server, citizen):
    with server.client() as c:
        # A citizen cannot search or read another citizen's episode.
        outcome(c.get("/careplan/EpisodeOfCare", params={"patient": "Patient/p-1"}, headers=bearer(citizen)), 403,
                "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/careplan/EpisodeOfCare/e-1", headers=bearer(citizen)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # …nor submit for them.
        outcome(c.post("/measurement/$submit-measurement", json=submission(server, 1, dict(GREEN), {}),
                       headers=bearer(citizen)), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # A nurse cannot act for a team she is not in, nor read another team's worklist.
        team = _team_of(c, citizen)
        other = "0" if team != "0" else "1"
        nurse_tokens = login(c, "ehealth", f"nurse-{other}-0")
        r = c.post(TOKEN_PATH.format(realm="ehealth"), data={"grant_type": "refresh_token",
                                                            "refresh_token": nurse_tokens["refresh_token"],
                                                            "care_team_id": f"ct-{team}"})
        outcome(r, 403, "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED")
        nurse = rescope(c, "ehealth", nurse_tokens, care_team_id=f"ct-{other}")
        outcome(c.get("/task/Task", params={"responsible": f"CareTeam/ct-{team}"}, headers=bearer(nurse)), 403,
                "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/careplan/EpisodeOfCare/e-0", headers=bearer(nurse)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")


async def _resource_count(database: str) -> int:
    from twin.server.storage import Storage

    storage = Storage.connect(database)
    await storage.open()
    try:
        async with storage.transaction() as tx:
            # Only what a submission writes: triage rows of earlier tests may still be arriving.
            return (await tx.fetch("SELECT COUNT(*) FROM resources WHERE type IN "
                                   "('Observation', 'QuestionnaireResponse', 'Provenance')"))[0][0]
    finally:
        await storage.close()


def test_rejections_leave_no_row_behind(server, citizen):
    """Rejected submissions (one bad entry among good ones, an oversized body) store nothing at all."""
    import asyncio

    before = asyncio.run(_resource_count(server.database))
    with server.client() as c:
        body = submission(server, 0, dict(GREEN), {"dyspnoea": True})
        body["parameter"][0]["resource"]["entry"][-2]["resource"]["valueQuantity"]["value"] = -3  # negative reading
        outcome(c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen)), 422,
                "MEASUREMENT_SUBMITMEASUREMENT_IMPOSSIBLE_VALUE")
        huge = b'{"resourceType": "Parameters", "parameter": [], "pad": "' + b"x" * 1_100_000 + b'"}'
        outcome(c.post("/measurement/$submit-measurement", content=huge, headers=bearer(citizen)), 413,
                "REQUEST_TOO_LARGE")
    assert asyncio.run(_resource_count(server.database)) == before
