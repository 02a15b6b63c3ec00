"""Every access to a patient's data leaves an AuditEvent for that patient, and nothing else does.

N known requests by the citizen and a nurse of their team touch one citizen's data (reads,
searches with and without ``_include``, operations, creates, patches); the national auditor then
finds, for that patient and since the first request, exactly one AuditEvent per request, with the
action each request implies (C create, R read/search, U update, E operation). Refused requests add
none. Over HTTP on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import pytest

from tests.server.test_api import GREEN, bearer, login, submission
from tests.server.test_audit import events, search
from tests.server.test_task_and_messages import nurse_of

CITIZEN = 29  # ct-0: used by no other test module


@pytest.fixture(scope="module")
def started() -> str:
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def test_every_patient_access_is_audited_once(server, started):
    n, p = CITIZEN, f"Patient/p-{CITIZEN}"
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{n}")
        nurse = nurse_of(c, "0")
        ch, nh = bearer(citizen), bearer(nurse)
        expected: Counter = Counter()

        def do(action: str | None, method: str, path: str, headers: dict, status: int, **kw) -> dict:
            r = c.request(method, path, headers=headers, **kw)
            assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text[:300]}"
            if action:
                expected[action] += 1
            return r.json()

        answer = do("C", "POST", "/measurement/$submit-measurement", ch, 201,
                    json=submission(server, n, {"spo2": 84, "pulse": 80}, {"dyspnoea": True}))
        obs_path = answer["entry"][0]["response"]["location"].rsplit("/_history", 1)[0].replace(server.base_url, "")
        deadline = time.monotonic() + 10
        while True:  # the triage (off the request path) makes the Task; polling searches audit as well
            bundle = do("R", "GET", "/task/Task", nh, 200, params={"responsible": "CareTeam/ct-0", "patient": p,
                                                                    "_include": "Task:focus"})
            tasks = [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Task"]
            if tasks:
                break
            expected["R"] -= 1  # an empty page touches no patient: no event
            assert time.monotonic() < deadline, "no Task within 10 s"
            time.sleep(0.1)
        do("R", "GET", f"/careplan/EpisodeOfCare/e-{n}", ch, 200)
        do("R", "GET", f"/patient/Patient/p-{n}", ch, 200)
        do("R", "GET", obs_path, ch, 200)
        do("R", "GET", obs_path, nh, 200)
        do("R", "GET", "/careplan/EpisodeOfCare", ch, 200, params={"patient": p})
        do("R", "GET", "/measurement/Observation", ch, 200, params={"patient": p})
        do("R", "GET", "/measurement/Observation", nh, 200, params={"patient": p, "_count": "1"})
        do("R", "GET", "/task/ClinicalImpression", nh, 200, params={"patient": p})
        do("E", "POST", "/careplan/$get-patient-procedures", ch, 200, json={"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": p}},
            {"name": "start", "valueDateTime": "2026-01-05T00:00:00+01:00"},
            {"name": "end", "valueDateTime": "2026-01-12T00:00:00+01:00"}]})
        do("E", "POST", "/measurement/$search-measurements", nh, 200, json={"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": p}}, {"name": "count", "valueInteger": 5},
            {"name": "start", "valueDateTime": "2025-01-01T00:00:00Z"}]})
        message = do("C", "POST", "/patient/Communication", ch, 201, json={
            "resourceType": "Communication", "status": "in-progress", "subject": {"reference": p},
            "payload": [{"contentString": "Hej, jeg har det skidt"}]})
        do("R", "GET", "/patient/Communication", ch, 200, params={"patient": p})
        do("U", "PATCH", f"/patient/Communication/{message['id']}", {**nh, "Content-Type": "application/json-patch+json"},
           200, json=[{"op": "replace", "path": "/status", "value": "completed"}])
        do("U", "PATCH", f"/task/Task/{tasks[0]['id']}", {**nh, "Content-Type": "application/json-patch+json"}, 200,
           json=[{"op": "add", "path": "/note/-", "value": {"text": "ringet op"}}])
        # refused requests: no event
        do(None, "GET", "/careplan/EpisodeOfCare/e-7", ch, 403)
        do(None, "GET", "/measurement/Observation", ch, 403, params={"patient": "Patient/p-7"})
        do(None, "POST", "/measurement/$submit-measurement", ch, 422,
           json=submission(server, n, {**GREEN, "spo2": 150}, {"dyspnoea": False}))
        do(None, "PATCH", f"/task/Task/{tasks[0]['id']}", {**nh, "Content-Type": "application/json-patch+json"}, 422,
           json=[{"op": "replace", "path": "/priority", "value": "routine"}])

        auditor = login(c, "ehealth", "auditor")
        found = events(search(c, auditor, patient=p, date=f"ge{started}", _count="200"))
    got = Counter(e["action"] for e in found)
    assert got == +expected, f"audited {dict(got)}, requests {dict(+expected)}"
    for event in found:  # each names exactly this patient
        assert [e["what"]["reference"] for e in event["entity"] if e["role"]["code"] == "1"] == [
            f"{server.base_url}/patient/Patient/p-{n}"]
