"""A clinician works a red measurement through, and citizen and team exchange messages — over HTTP,
on SQLite and PostgreSQL.

The FUT flow (reference/fut-infrastructure.md §2 calls 10–13, §5): a citizen submits a red
measurement; the triage (asynchronous, the real worker) puts a Task on the team's worklist; the
team's nurse claims it (JSON Patch ``/owner`` + ``/status`` in-progress), records a
ClinicalImpression ``MeasurementAssessment`` and completes the Task, which then leaves the
``status=ready`` list. Messages (Communication, ehealth-message) go citizen → team and nurse →
citizen and are marked read by their recipient. Every returned resource is validated with the R4B
models of ``fhir.resources``; every refusal is an OperationOutcome with its code.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.clinicalimpression import ClinicalImpression
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.task import Task

from tests.server.test_api import bearer, login, outcome, rescope, submission
from twin.server import fhir as fr

TASK_CITIZEN = 5  # citizens of the pilot-100 seed this module uses (test_api uses 0 and 1)
MESSAGE_CITIZEN, OTHER_CITIZEN, PAGING_CITIZEN = 8, 9, 10
RED = {"spo2": 84, "pulse": 80}
RED_ANSWERS = {"dyspnoea": True, "cough": True, "sputum": False}
PATCH = "application/json-patch+json"


def patch_headers(tokens: dict, if_match: str | None = None) -> dict:
    h = {**bearer(tokens), "Content-Type": PATCH}
    if if_match is not None:
        h["If-Match"] = if_match
    return h


def team_of(c, citizen_tokens: dict, n: int) -> str:
    r = c.get("/careplan/EpisodeOfCare", params={"patient": f"Patient/p-{n}"}, headers=bearer(citizen_tokens))
    assert r.status_code == 200, r.text
    return r.json()["entry"][0]["resource"]["team"][0]["reference"].rsplit("/ct-", 1)[1]


def other_team(team: str) -> str:
    return "1" if team == "0" else "0"  # pilot-100 has the teams 0 (municipal) and 1 (hospital)


def nurse_of(c, team: str) -> dict:
    return rescope(c, "ehealth", login(c, "ehealth", f"nurse-{team}-0"), care_team_id=f"ct-{team}")


def entries(bundle: dict, mode: str = "match") -> list[dict]:
    Bundle.model_validate(bundle)
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def next_link(bundle: dict) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


def path_of(url: str, server) -> str:
    return url.replace(server.base_url, "")


def investigated(resource: dict) -> list[str]:
    return [i["reference"] for inv in resource.get("investigation", []) for i in inv.get("item", [])]


def red_task(server, c, n: int) -> dict:
    """Submit a red measurement for citizen ``n`` and wait (bounded) for the real triage worker to
    put its Task on the team's worklist; returns ids, tokens and the Task and triage found."""
    citizen = login(c, "nemlogin", f"citizen-{n}")
    team = team_of(c, citizen, n)
    r = c.post("/measurement/$submit-measurement", json=submission(server, n, dict(RED), dict(RED_ANSWERS)),
               headers=bearer(citizen))
    assert r.status_code == 201, r.text
    obs = r.json()["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    nurse = nurse_of(c, team)
    deadline = time.monotonic() + 10
    while True:  # triage runs off the request path: poll the real worker's output, bounded
        r = c.get("/task/Task", params={"responsible": f"CareTeam/ct-{team}", "patient": f"Patient/p-{n}",
                                        "status": "ready", "_sort": "-priority", "_include": "Task:focus",
                                        "_count": "200"}, headers=bearer(nurse))
        assert r.status_code == 200, r.text
        focus = {e["fullUrl"]: e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "include"}
        # other Tasks of the patient (other tests, the missing-measurement job) have other foci: pick ours
        mine = [(t, focus[t["focus"]["reference"]]) for t in entries(r.json())
                if obs in investigated(focus.get(t["focus"]["reference"], {}))]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert mine, "the triage did not put a Task on the worklist within 10 s"
    task, triage = mine[0]
    Task.model_validate(task)
    ClinicalImpression.model_validate(triage)
    assert task["priority"] == "asap" and task["status"] == "ready"
    return {"n": n, "team": team, "citizen": citizen, "nurse": nurse, "task": task, "triage": triage, "obs": obs}


def assessment(server, triage: dict, n: int, team: str, decision: str = "approved", note: str | None = "Called: ok"
               ) -> dict:
    refs = fr.Refs(server.base_url)
    episode = triage["extension"][0]["valueReference"]["reference"].rsplit("/", 1)[1]
    return fr.clinical_impression_assessment(refs, None, f"p-{n}", episode, triage["id"], f"pr-{team}-0",
                                             "2026-01-01T10:00:00+01:00", decision, note)


@pytest.fixture(scope="module")
def ready_task(server):
    """A red Task nobody touches except to be refused."""
    with server.client() as c:
        return red_task(server, c, TASK_CITIZEN)


def test_nurse_claims_assesses_and_completes_a_red_task(server):
    with server.client() as c:
        t = red_task(server, c, TASK_CITIZEN)
        task_url = f"/task/Task/{t['task']['id']}"
        nurse, team, n = t["nurse"], t["team"], t["n"]

        r = c.get(task_url, headers=bearer(nurse))
        assert r.status_code == 200 and r.headers["ETag"] == 'W/"1"'

        # Claim: owner = herself, status in-progress, guarded by the version she read.
        claim = [{"op": "add", "path": "/owner", "value": {"reference": f"Practitioner/pr-{team}-0"}},
                 {"op": "replace", "path": "/status", "value": "in-progress"}]
        r = c.patch(task_url, json=claim, headers=patch_headers(nurse, 'W/"1"'))
        assert r.status_code == 200, r.text
        claimed = r.json()
        Task.model_validate(claimed)
        assert r.headers["ETag"] == 'W/"2"' and claimed["meta"]["versionId"] == "2"
        assert claimed["status"] == "in-progress"
        assert claimed["owner"]["reference"] == f"{server.base_url}/organization/Practitioner/pr-{team}-0"
        assert claimed["executionPeriod"]["start"] and claimed["meta"]["lastUpdated"]

        # A second nurse working from the version she read before the claim is told so.
        outcome(c.patch(task_url, json=[{"op": "replace", "path": "/status", "value": "completed"}],
                        headers=patch_headers(nurse, 'W/"1"')), 412, "REQUEST_VERSION_CONFLICT")

        # The assessment of the triage: MeasurementAssessment, previous → the TriagingResult.
        r = c.post("/task/ClinicalImpression", json=assessment(server, t["triage"], n, team), headers=bearer(nurse))
        assert r.status_code == 201, r.text
        ci = r.json()
        ClinicalImpression.model_validate(ci)
        assert r.headers["Location"] == f"{server.base_url}/task/ClinicalImpression/{ci['id']}/_history/1"
        assert ci["code"]["coding"][0]["code"] == "MeasurementAssessment"
        assert ci["previous"]["reference"] == f"{server.base_url}/task/ClinicalImpression/{t['triage']['id']}"
        assert ci["assessor"]["reference"].endswith(f"/Practitioner/pr-{team}-0")
        assert investigated(ci) and set(investigated(ci)) <= set(investigated(t["triage"]))
        assert ci["note"][0]["text"] == "Called: ok"
        stored = c.get(path_of(r.headers["Location"].rsplit("/_history", 1)[0], server), headers=bearer(nurse))
        assert stored.status_code == 200 and stored.json() == ci

        # Complete, with a note appended; the task leaves the ready worklist.
        done = [{"op": "replace", "path": "/status", "value": "completed"},
                {"op": "add", "path": "/note/-", "value": {"text": "Assessed, no action"}}]
        r = c.patch(task_url, json=done, headers=patch_headers(nurse, 'W/"2"'))
        assert r.status_code == 200, r.text
        completed = r.json()
        Task.model_validate(completed)
        assert completed["status"] == "completed" and r.headers["ETag"] == 'W/"3"'
        assert completed["note"][0]["authorReference"]["reference"].endswith(f"/Practitioner/pr-{team}-0")
        assert completed["executionPeriod"]["end"]

        def worklist(status):
            r = c.get("/task/Task", params={"responsible": f"CareTeam/ct-{team}", "patient": f"Patient/p-{n}",
                                            "status": status, "_count": "200"}, headers=bearer(nurse))
            assert r.status_code == 200, r.text
            return [x["id"] for x in entries(r.json())]

        assert t["task"]["id"] not in worklist("ready")
        assert t["task"]["id"] in worklist("completed")

        # A finished task stays finished; repeating the completion (a lost answer, retried) is harmless.
        outcome(c.patch(task_url, json=[{"op": "replace", "path": "/status", "value": "in-progress"}],
                        headers=patch_headers(nurse)), 422, "TASK_STATUS_TRANSITION_NOT_ALLOWED")
        r = c.patch(task_url, json=[{"op": "replace", "path": "/status", "value": "completed"}],
                    headers=patch_headers(nurse))
        assert r.status_code == 200 and r.headers["ETag"] == 'W/"3"'

        # The patient's assessments, found by patient and by episode, paged.
        r = c.get("/task/ClinicalImpression", params={"patient": f"Patient/p-{n}", "code": "MeasurementAssessment"},
                  headers=bearer(nurse))
        assert r.status_code == 200, r.text
        assert ci["id"] in [x["id"] for x in entries(r.json())]
        for x in entries(r.json()):
            ClinicalImpression.model_validate(x)
        first = c.get("/task/ClinicalImpression", params={"episodeOfCare": f"EpisodeOfCare/e-{n}", "_count": "1"},
                      headers=bearer(nurse))
        assert first.status_code == 200 and len(entries(first.json())) == 1
        second = c.get(path_of(next_link(first.json()), server), headers=bearer(nurse))
        assert second.status_code == 200 and len(entries(second.json())) == 1
        assert entries(first.json())[0]["id"] != entries(second.json())[0]["id"]


def test_concurrent_claims_one_wins(server):
    """Parallel claims of one Task on the version read: exactly one is stored, the others get 412.
    On PostgreSQL the requests really overlap in the database (an UPDATE that lost the race matches
    nothing); SQLite serialises them, and the later ones fail the If-Match check."""
    with server.client() as c:
        t = red_task(server, c, TASK_CITIZEN)
    url = f"/task/Task/{t['task']['id']}"
    claim = [{"op": "add", "path": "/owner", "value": {"reference": f"Practitioner/pr-{t['team']}-0"}},
             {"op": "replace", "path": "/status", "value": "in-progress"}]

    def attempt(_):
        with server.client() as c:
            return c.patch(url, json=claim, headers=patch_headers(t["nurse"], 'W/"1"'))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(attempt, range(4)))
    assert sorted(r.status_code for r in answers) == [200, 412, 412, 412], [r.text for r in answers]
    for r in answers:
        if r.status_code == 412:
            outcome(r, 412, "REQUEST_VERSION_CONFLICT")
    with server.client() as c:
        assert c.get(url, headers=bearer(t["nurse"])).headers["ETag"] == 'W/"2"'

    # Without If-Match a client asks for its change on whatever is current: parallel notes all land.
    def note(k):
        with server.client() as c:
            return c.patch(url, json=[{"op": "add", "path": "/note/-", "value": {"text": f"note {k}"}}],
                           headers=patch_headers(t["nurse"]))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(note, range(4)))
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    with server.client() as c:
        r = c.get(url, headers=bearer(t["nurse"]))
    assert r.headers["ETag"] == 'W/"6"' and sorted(n["text"] for n in r.json()["note"]) == [f"note {k}" for k in range(4)]


@pytest.mark.parametrize("body,status,code", [
    ({"op": "replace", "path": "/status", "value": "completed"}, 400, "REQUEST_INVALID_PATCH"),  # not a list
    ([], 400, "REQUEST_INVALID_PATCH"),
    ([{"op": "frobnicate", "path": "/status"}], 400, "REQUEST_INVALID_PATCH"),
    ([{"op": "replace", "path": "/status"}], 400, "REQUEST_INVALID_PATCH"),  # no value
    (["replace /status completed"], 400, "REQUEST_INVALID_PATCH"),
    ([{"op": "replace", "path": "/priority", "value": "stat"}], 422, "TASK_PATCH_NOT_ALLOWED"),
    ([{"op": "remove", "path": "/status"}], 422, "TASK_PATCH_NOT_ALLOWED"),
    ([{"op": "copy", "from": "/for", "path": "/owner"}], 422, "TASK_PATCH_NOT_ALLOWED"),
    ([{"op": "replace", "path": "/status", "value": "done"}], 422, "TASK_INVALID_STATUS"),
    ([{"op": "replace", "path": "/status", "value": "draft"}], 422, "TASK_STATUS_TRANSITION_NOT_ALLOWED"),
    ([{"op": "add", "path": "/owner", "value": {"reference": "Practitioner/pr-auditor"}}], 422,
     "TASK_OWNER_NOT_CALLER"),
    ([{"op": "add", "path": "/owner", "value": "me"}], 400, "REQUEST_INVALID_REFERENCE"),
    ([{"op": "add", "path": "/note/-", "value": {"text": "x" * 10_001}}], 422, "TASK_INVALID_NOTE"),
    # atomic: a good first operation is not applied when a later one is refused
    ([{"op": "replace", "path": "/status", "value": "in-progress"},
      {"op": "replace", "path": "/intent", "value": "order"}], 422, "TASK_PATCH_NOT_ALLOWED"),
])
def test_bad_task_patches_are_refused_and_change_nothing(server, ready_task, body, status, code):
    with server.client() as c:
        url = f"/task/Task/{ready_task['task']['id']}"
        outcome(c.patch(url, json=body, headers=patch_headers(ready_task["nurse"])), status, code)
        r = c.get(url, headers=bearer(ready_task["nurse"]))
        assert r.headers["ETag"] == 'W/"1"' and r.json()["status"] == "ready"


def test_task_patch_access_and_protocol(server, ready_task):
    with server.client() as c:
        url = f"/task/Task/{ready_task['task']['id']}"
        op = [{"op": "replace", "path": "/status", "value": "in-progress"}]
        other = nurse_of(c, other_team(ready_task["team"]))
        outcome(c.patch(url, json=op, headers=patch_headers(other)), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.patch(url, json=op, headers=patch_headers(ready_task["citizen"])), 403,
                "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        nurse_without_team = login(c, "ehealth", f"nurse-{ready_task['team']}-0")
        outcome(c.patch(url, json=op, headers=patch_headers(nurse_without_team)), 403, "SECURITY_TOKEN_CONTEXT_MISSING")
        nurse = ready_task["nurse"]
        outcome(c.patch(url, json=op, headers=bearer(nurse)), 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE")  # fhir+json
        outcome(c.patch(url, content=b"[{", headers=patch_headers(nurse)), 400, "REQUEST_MALFORMED_JSON")
        outcome(c.patch(url, json=op, headers=patch_headers(nurse, "version one")), 400, "REQUEST_INVALID_IF_MATCH")
        outcome(c.patch(url, json=op, headers=patch_headers(nurse, 'W/"7"')), 412, "REQUEST_VERSION_CONFLICT")
        outcome(c.patch("/task/Task/no-such-task", json=op, headers=patch_headers(nurse)), 404, "RESOURCE_NOT_FOUND")
        outcome(c.delete(url, headers=bearer(nurse)), 405, "REQUEST_METHOD_NOT_ALLOWED")
        assert c.get(url, headers=bearer(nurse)).headers["ETag"] == 'W/"1"'


def test_bad_assessments_are_refused(server, ready_task):
    t = ready_task
    with server.client() as c:
        nurse, n, team = t["nurse"], t["n"], t["team"]

        def post(body, tokens=nurse):
            return c.post("/task/ClinicalImpression", json=body, headers=bearer(tokens))

        good = assessment(server, t["triage"], n, team)
        outcome(post({**good, "resourceType": "Observation"}), 400, "REQUEST_WRONG_RESOURCE_TYPE")
        outcome(post([good]), 400, "REQUEST_WRONG_RESOURCE_TYPE")
        outcome(post({**good, "code": {"coding": [{"system": fr.CI_CODE_SYSTEM, "code": "TriagingResult"}]}}), 422,
                "CLINICALIMPRESSION_INVALID_CODE")
        outcome(post({k: v for k, v in good.items() if k != "previous"}), 422, "CLINICALIMPRESSION_PREVIOUS_MISSING")
        outcome(post({**good, "previous": {"reference": "ClinicalImpression/no-such-ci"}}), 422,
                "CLINICALIMPRESSION_PREVIOUS_NOT_FOUND")
        outcome(post({**good, "previous": {"reference": f"Observation/{t['obs'].rsplit('/', 1)[1]}"}}), 400,
                "REQUEST_INVALID_REFERENCE")
        outcome(post({**good, "extension": good["extension"][:1]}), 422, "CLINICALIMPRESSION_INVALID_DECISION")
        outcome(post({**good, "subject": {"reference": "Patient/p-1"}}), 422, "CLINICALIMPRESSION_SUBJECT_MISMATCH")
        outcome(post({**good, "assessor": {"reference": "Practitioner/pr-auditor"}}), 422,
                "CLINICALIMPRESSION_ASSESSOR_NOT_CALLER")
        outcome(post({**good, "status": "entered-in-error"}), 422, "CLINICALIMPRESSION_INVALID_STATUS")
        anyone = {k: v for k, v in good.items() if k not in ("assessor", "note")}  # no assessor named: the caller
        outcome(post(anyone, nurse_of(c, other_team(team))), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(post(good, t["citizen"]), 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        # an assessment of the assessment is not an assessment of a triage
        r = post(good)
        assert r.status_code == 201, r.text
        outcome(post({**good, "previous": {"reference": f"ClinicalImpression/{r.json()['id']}"}}), 422,
                "CLINICALIMPRESSION_PREVIOUS_NOT_TRIAGE")


def test_assessment_search_follows_the_token_context(server, ready_task):
    t = ready_task
    with server.client() as c:
        q = {"patient": f"Patient/p-{t['n']}"}
        other = nurse_of(c, other_team(t["team"]))
        outcome(c.get("/task/ClinicalImpression", params=q, headers=bearer(other)), 403,
                "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/task/ClinicalImpression", params={"episodeOfCare": f"EpisodeOfCare/e-{t['n']}"},
                      headers=bearer(other)), 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/task/ClinicalImpression", headers=bearer(t["nurse"])), 403, "SECURITY_SEARCH_PARAMS_MANDATORY")
        outcome(c.get("/task/ClinicalImpression", params={"patient": "Observation/x"}, headers=bearer(t["nurse"])),
                400, "SEARCH_INVALID_REFERENCE")
        outcome(c.get("/task/ClinicalImpression", params={**q, "_count": "0"}, headers=bearer(t["nurse"])), 400,
                "SEARCH_INVALID_COUNT")
        outcome(c.get("/task/Task", params={"responsible": "not/a reference"}, headers=bearer(t["nurse"])), 400,
                "SEARCH_INVALID_REFERENCE")


# ------------------------------------------------------------------------------------------ messages

def message(server, n: int, text: str, sender: str, recipient: str, status: str = "in-progress") -> dict:
    body = fr.communication(fr.Refs(server.base_url), None, f"p-{n}", None, sender, recipient, text,
                            "2026-01-01T10:00:00+01:00")
    body["status"] = status
    return body


def test_messages_between_citizen_and_team(server):
    n = MESSAGE_CITIZEN
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{n}")
        team = team_of(c, citizen, n)
        nurse = nurse_of(c, team)
        base = server.base_url

        # citizen → care team
        r = c.post("/patient/Communication", json=message(server, n, "Jeg er mere forpustet i dag.",
                                                          f"Patient/p-{n}", f"CareTeam/ct-{team}"),
                   headers=bearer(citizen))
        assert r.status_code == 201, r.text
        sent = r.json()
        Communication.model_validate(sent)
        assert r.headers["Location"] == f"{base}/patient/Communication/{sent['id']}/_history/1"
        assert sent["status"] == "in-progress" and sent["sender"]["reference"] == f"{base}/patient/Patient/p-{n}"
        assert {"url": fr.EXT_RECIPIENT_CARETEAM, "valueReference": {"reference": f"{base}/organization/CareTeam/ct-{team}"}} \
            in sent["extension"]
        assert {"url": fr.EXT_EPISODE_OF_CARE, "valueReference": {"reference": f"{base}/careplan/EpisodeOfCare/e-{n}"}} \
            in sent["extension"]

        # the team's unread inbox has it; the nurse reads it and marks it read
        r = c.get("/patient/Communication", params={"recipient": f"CareTeam/ct-{team}", "status": "in-progress",
                                                    "_count": "200"}, headers=bearer(nurse))
        assert r.status_code == 200, r.text
        inbox = entries(r.json())
        assert sent["id"] in [m["id"] for m in inbox]
        for m in inbox:
            Communication.model_validate(m)
        r = c.patch(f"/patient/Communication/{sent['id']}", json=[{"op": "replace", "path": "/status",
                                                                   "value": "completed"}],
                    headers=patch_headers(nurse, 'W/"1"'))
        assert r.status_code == 200, r.text
        read = r.json()
        Communication.model_validate(read)
        assert read["status"] == "completed" and read["received"] and r.headers["ETag"] == 'W/"2"'
        r = c.get("/patient/Communication", params={"recipient": f"CareTeam/ct-{team}", "status": "in-progress",
                                                    "_count": "200"}, headers=bearer(nurse))
        assert sent["id"] not in [m["id"] for m in entries(r.json())]
        assert c.get(f"/patient/Communication/{sent['id']}", headers=bearer(citizen)).json()["status"] == "completed"

        # nurse → citizen
        r = c.post("/patient/Communication", json=message(server, n, "Vi ringer dig op i eftermiddag.",
                                                          f"Practitioner/pr-{team}-0", f"Patient/p-{n}"),
                   headers=bearer(nurse))
        assert r.status_code == 201, r.text
        reply = r.json()
        Communication.model_validate(reply)
        assert reply["sender"]["reference"] == f"{base}/organization/Practitioner/pr-{team}-0"
        assert reply["recipient"] == [{"reference": f"{base}/patient/Patient/p-{n}"}]
        assert {"url": fr.EXT_SENDER_CARETEAM, "valueReference": {"reference": f"{base}/organization/CareTeam/ct-{team}"}} \
            in reply["extension"]

        # the citizen's inbox holds the reply, not their own message; the whole conversation holds both
        r = c.get("/patient/Communication", params={"recipient": f"Patient/p-{n}"}, headers=bearer(citizen))
        assert r.status_code == 200, r.text
        assert [m["id"] for m in entries(r.json())] == [reply["id"]]
        r = c.get("/patient/Communication", params={"patient": f"Patient/p-{n}"}, headers=bearer(citizen))
        assert {sent["id"], reply["id"]} <= {m["id"] for m in entries(r.json())}

        # only a recipient marks a message read: the citizen theirs, not the one they sent
        outcome(c.patch(f"/patient/Communication/{sent['id']}", json=[{"op": "replace", "path": "/status",
                                                                      "value": "completed"}],
                        headers=patch_headers(citizen)), 403, "COMMUNICATION_NOT_RECIPIENT")
        r = c.patch(f"/patient/Communication/{reply['id']}", json=[{"op": "add", "path": "/status",
                                                                    "value": "completed"}],
                    headers=patch_headers(citizen))
        assert r.status_code == 200 and r.json()["status"] == "completed"


def test_messages_stay_within_the_token_context(server):
    n, m = MESSAGE_CITIZEN, OTHER_CITIZEN
    with server.client() as c:
        citizen, other_citizen = login(c, "nemlogin", f"citizen-{n}"), login(c, "nemlogin", f"citizen-{m}")
        team = team_of(c, citizen, n)
        r = c.post("/patient/Communication", json=message(server, n, "Privat.", f"Patient/p-{n}", f"CareTeam/ct-{team}"),
                   headers=bearer(citizen))
        assert r.status_code == 201, r.text
        msg_id = r.json()["id"]

        # another citizen can neither search, read, mark nor write the first one's messages
        for params in ({"patient": f"Patient/p-{n}"}, {"recipient": f"Patient/p-{n}"}):
            outcome(c.get("/patient/Communication", params=params, headers=bearer(other_citizen)), 403,
                    "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get(f"/patient/Communication/{msg_id}", headers=bearer(other_citizen)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.patch(f"/patient/Communication/{msg_id}", json=[{"op": "replace", "path": "/status",
                                                                   "value": "completed"}],
                        headers=patch_headers(other_citizen)), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.post("/patient/Communication", json=message(server, n, "Forged.", f"Patient/p-{n}",
                                                              f"CareTeam/ct-{team}"),
                       headers=bearer(other_citizen)), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")

        # nor can another team's nurse
        other = nurse_of(c, other_team(team))
        outcome(c.get("/patient/Communication", params={"patient": f"Patient/p-{n}"}, headers=bearer(other)), 403,
                "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/patient/Communication", params={"recipient": f"CareTeam/ct-{team}"}, headers=bearer(other)),
                403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get(f"/patient/Communication/{msg_id}", headers=bearer(other)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.post("/patient/Communication", json=message(server, n, "Hej.", f"Practitioner/pr-{other_team(team)}-0",
                                                              f"Patient/p-{n}"), headers=bearer(other)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(c.get("/patient/Communication", headers=bearer(citizen)), 403, "SECURITY_SEARCH_PARAMS_MANDATORY")


@pytest.mark.parametrize("change,status,code", [
    (lambda b: b.update(resourceType="Observation"), 400, "REQUEST_WRONG_RESOURCE_TYPE"),
    (lambda b: b.update(status="preparation"), 422, "COMMUNICATION_INVALID_STATUS"),
    (lambda b: b.pop("status"), 422, "COMMUNICATION_INVALID_STATUS"),
    (lambda b: b.update(payload=[{"contentString": "x" * 10_001}]), 422, "COMMUNICATION_PAYLOAD_TOO_LONG"),
    (lambda b: b.update(payload=[{"contentString": "   "}]), 422, "COMMUNICATION_PAYLOAD_EMPTY"),
    (lambda b: b.update(payload=[{"contentAttachment": {"url": "http://x/y.pdf"}}]), 422,
     "COMMUNICATION_PAYLOAD_NOT_TEXT"),
    (lambda b: b.pop("payload"), 422, "COMMUNICATION_PAYLOAD_MISSING"),
    (lambda b: b.pop("subject"), 422, "COMMUNICATION_SUBJECT_MISSING"),
    (lambda b: b.update(subject={"reference": "Observation/1"}), 400, "REQUEST_INVALID_REFERENCE"),
    (lambda b: b.update(recipient=[{"reference": "Patient/p-1"}]), 422, "COMMUNICATION_INVALID_RECIPIENT"),
    (lambda b: b.update(recipient={"reference": "Patient/p-1"}), 422, "COMMUNICATION_INVALID_RECIPIENT"),
    (lambda b: b.update(recipient=[{"reference": "somebody"}]), 400, "REQUEST_INVALID_REFERENCE"),
    (lambda b: b.update(category=[{"coding": [{"system": fr.MESSAGE_CATEGORY_SYSTEM, "code": "advice"}]}]), 422,
     "COMMUNICATION_INVALID_CATEGORY"),
])
def test_bad_messages_are_refused(server, change, status, code):
    n = MESSAGE_CITIZEN
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{n}")
        body = message(server, n, "Hej.", f"Patient/p-{n}", f"CareTeam/ct-{team_of(c, citizen, n)}")
        change(body)
        outcome(c.post("/patient/Communication", json=body, headers=bearer(citizen)), status, code)


def test_bad_message_patches_are_refused(server):
    n = MESSAGE_CITIZEN
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{n}")
        team = team_of(c, citizen, n)
        nurse = nurse_of(c, team)
        r = c.post("/patient/Communication", json=message(server, n, "Til jer.", f"Patient/p-{n}", f"CareTeam/ct-{team}"),
                   headers=bearer(citizen))
        url = f"/patient/Communication/{r.json()['id']}"
        outcome(c.patch(url, json=[{"op": "replace", "path": "/payload/0/contentString", "value": "changed"}],
                        headers=patch_headers(nurse)), 422, "COMMUNICATION_PATCH_NOT_ALLOWED")
        outcome(c.patch(url, json=[{"op": "replace", "path": "/status", "value": "entered-in-error"}],
                        headers=patch_headers(nurse)), 422, "COMMUNICATION_INVALID_STATUS")
        outcome(c.patch(url, json={"status": "completed"}, headers=patch_headers(nurse)), 400, "REQUEST_INVALID_PATCH")
        outcome(c.patch(url, json=[{"op": "replace", "path": "/status", "value": "completed"}],
                        headers=patch_headers(nurse, 'W/"5"')), 412, "REQUEST_VERSION_CONFLICT")
        outcome(c.patch("/patient/Communication/nope", json=[{"op": "replace", "path": "/status", "value": "completed"}],
                        headers=patch_headers(nurse)), 404, "RESOURCE_NOT_FOUND")
        assert c.get(url, headers=bearer(nurse)).headers["ETag"] == 'W/"1"'


def test_messages_are_paged_newest_first(server):
    n = PAGING_CITIZEN
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{n}")
        team = team_of(c, citizen, n)
        nurse = nurse_of(c, team)
        ids = []
        for k in range(3):
            r = c.post("/patient/Communication", json=message(server, n, f"Besked {k}", f"Practitioner/pr-{team}-0",
                                                              f"Patient/p-{n}"), headers=bearer(nurse))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        r = c.post("/patient/Communication", json=message(server, n, "Svar", f"Patient/p-{n}", f"CareTeam/ct-{team}"),
                   headers=bearer(citizen))
        assert r.status_code == 201, r.text
        for params, expected in (({"recipient": f"Patient/p-{n}"}, ids[::-1]),  # the indexed recipient column
                                 ({"patient": f"Patient/p-{n}"}, [r.json()["id"], *ids[::-1]])):
            got, url, pages = [], "/patient/Communication", 0
            query = {**params, "_count": "2"}
            while url is not None:
                page = c.get(url, params=query, headers=bearer(citizen))
                assert page.status_code == 200, page.text
                got += entries(page.json())
                url, query, pages = next_link(page.json()), None, pages + 1
                url = path_of(url, server) if url else None
            assert sorted(m["id"] for m in got) == sorted(expected)  # every message once: no repeats, no gaps
            assert pages == (len(expected) + 1) // 2
            sent = [m["sent"] for m in got]
            assert sent == sorted(sent, reverse=True)  # newest first

