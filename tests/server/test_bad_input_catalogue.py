"""Every case of the bad-input catalogue (``bad_inputs.CASES``) against the real server, both databases.

Per case: the exact 4xx status and OperationOutcome code (validated with ``fhir.resources.R4B``;
a 401 carries ``WWW-Authenticate: Bearer``), nothing stored — resource rows and their versions per
type, outbox, audit, accounts and memberships are the same before and after (the API audits only
requests it answers with data, docs/API.md: a refusal leaves no audit row) — and ``/health``
still answers. Cases that hit a known bug in a module this suite may not change are strict xfails
with the reason (``Case.xfail``).
"""

from __future__ import annotations

import json
import socket
import urllib.parse

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.server import bad_inputs as bi
from tests.server.dbprobe import Probe
from tests.server.test_api import bearer, login, rescope
from tests.server.test_user_management import add_to_team, admin_token, create_practitioner, unique, world

CLINICIAN_ROLES = ("citizenEnroller", "monitoring_adjuster", "monitoringAssistor")


@pytest.fixture(scope="module")
def ctx(server) -> bi.Ctx:
    from tests.server.test_task_and_messages import red_task

    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        clinician = unique("catalogue-clinician")
        pid = create_practitioner(c, admin, clinician, roles=CLINICIAN_ROLES)
        role = add_to_team(c, admin, pid, w.a.team)
        loner = create_practitioner(c, admin, unique("catalogue-loner"))
        red = red_task(server, c, bi.CITIZEN)
        citizen = login(c, "nemlogin", f"citizen-{bi.CITIZEN}")
        ctx = bi.Ctx(server.base_url, {}, red["task"]["id"], red["triage"]["id"], "", role, loner)
        r = c.post("/patient/Communication", json=bi.communication(ctx), headers=bearer(citizen))
        assert r.status_code == 201, r.text
        ctx.message = r.json()["id"]
        ctx.tokens = {"citizen": citizen, "nurse": red["nurse"], "admin": admin, "auditor": login(c, "ehealth", "auditor"),
                      "adjuster": rescope(c, "ehealth", login(c, "ehealth", clinician), care_team_id=w.a.team),
                      "garbage": {"access_token": "garbage.garbage.garbage"}}
    return ctx


@pytest.fixture(scope="module")
def probe(server):
    with Probe(server.database) as p:
        yield p


def raw_request(base_url: str, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes, dict]:
    """A request sent byte by byte (httpx would not send a Content-Length that lies)."""
    url = urllib.parse.urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                header_part, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in header_part.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
    header_part, _, rest = data.partition(b"\r\n\r\n")
    lines = header_part.decode("latin-1").split("\r\n")
    response_headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), rest, response_headers


def send(server, ctx: bi.Ctx, case: bi.Case):
    """(status, body bytes, headers) of ``case`` sent to ``server``."""
    headers = {}
    if case.auth is not None:
        headers["Authorization"] = bearer(ctx.tokens[case.auth])["Authorization"]
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    headers.update(dict(case.headers))
    body = case.build(ctx)
    path = bi.path_of(case, ctx)
    if "raw" in case.tags:
        return raw_request(server.base_url, case.method, path, headers, body or b"")
    with server.client() as c:
        r = c.request(case.method, path, params=list(case.params) or None, content=body, headers=headers)
    return r.status_code, r.content, r.headers


CASES = [pytest.param(case, id=case.name, marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail
                      else []) for case in bi.CASES]


def test_catalogue_is_large_and_named_uniquely():
    names = [case.name for case in bi.CASES]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert len(names) >= 100
    assert all(400 <= case.status < 500 for case in bi.CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_and_stores_nothing(server, ctx, probe, case):
    probe.quiet()
    before = probe.snapshot()
    status, content, headers = send(server, ctx, case)
    try:
        body = json.loads(content)
    except ValueError:
        pytest.fail(f"{case.name}: {status} answer is not JSON: {content[:200]!r}")
    assert (status, _code(body)) == (case.status, case.code), f"{case.name}: {status} {content[:400]!r}"
    OperationOutcome.model_validate(body)
    if status == 401 and "/openid-connect/" not in case.path:  # a bearer-protected route
        assert headers.get("www-authenticate") == "Bearer"
    assert "traceback" not in content.decode("utf-8", "replace").lower()
    probe.quiet()
    assert probe.snapshot() == before, f"{case.name} left rows behind"
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"


def _code(body) -> str | None:
    try:
        return body["issue"][0]["details"]["coding"][0]["code"]
    except (KeyError, IndexError, TypeError):
        return None


def test_service_is_healthy_after_the_catalogue(server, ctx):
    """The whole catalogue once more back to back (bugs included), then the service still works."""
    for case in bi.CASES:
        status, _, _ = send(server, ctx, case)
        assert status < 600
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.get(f"/careplan/EpisodeOfCare/e-{bi.CITIZEN}", headers=bearer(ctx.tokens["citizen"]))
        assert r.status_code == 200, r.text
