"""User management per organisation (brugerstyring) over HTTP, on SQLite and PostgreSQL.

An organisation's administrator adds a practitioner and gives them a care team; the practitioner
can work there at once, and loses access at once when the membership is removed. Nobody manages
another organisation's staff. Every resource returned is validated with ``fhir.resources.R4B``.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole

from tests.conftest import SCENARIOS
from tests.server.test_api import TOKEN_PATH, bearer, login, outcome, rescope
from twin.scenario import load_scenario
from twin.seed import build_seed_rows
from twin.server import fhir as fr
from twin.server.routes_organization import EXT_ACCOUNT_ROLE, EXT_INITIAL_PASSWORD, role_id


@dataclass(frozen=True)
class Side:
    """One organisation of the pilot-100 seed: a team, a citizen followed by it, its accounts."""

    org: str
    team: str
    patient: str
    admin: str  # username
    nurse: str  # username
    nurse_id: str  # Practitioner id


@dataclass(frozen=True)
class World:
    a: Side  # citizen 0's organisation
    b: Side  # another organisation


@functools.cache
def world() -> World:
    """The ids the seed gives pilot-100 (the seed is deterministic; ids do not depend on the base URL)."""
    rows, accounts, memberships, _ = build_seed_rows(load_scenario(SCENARIOS / "pilot-100.toml"), "http://127.0.0.1:1")
    episodes = {r.patient: (r.team, r.org) for r in rows if r.type == "EpisodeOfCare"}
    username = {user_id: name for name, _realm, _type, user_id, _roles in accounts}

    def side(patient: str) -> Side:
        team, org = episodes[patient]
        nurse_id = sorted(p for p, t, _o, role in memberships if t == team and role == "monitoringAssistor")[0]
        return Side(org, team, patient, f"admin-{org.removeprefix('org-')}", username[nurse_id], nurse_id)

    a = side("p-0")
    other = sorted((p for p, (_t, o) in episodes.items() if o != a.org), key=lambda p: int(p.removeprefix("p-")))
    return World(a, side(other[0]))


def admin_token(c, side: Side) -> dict:
    return rescope(c, "ehealth", login(c, "ehealth", side.admin), organization_id=side.org)


def new_practitioner(username: str, roles=("monitoringAssistor",), password: str | None = None) -> dict:
    body = {"resourceType": "Practitioner", "identifier": [{"system": fr.USERNAME_SYSTEM, "value": username}],
            "name": [{"given": ["Ny"], "family": "Sygeplejerske"}],
            "extension": [{"url": EXT_ACCOUNT_ROLE, "valueCode": r} for r in roles]}
    if password is not None:
        body["extension"].append({"url": EXT_INITIAL_PASSWORD, "valueString": password})
    return body


def new_role(practitioner_id: str, team: str, role: str = "monitoringAssistor") -> dict:
    return {"resourceType": "PractitionerRole",
            "extension": [{"url": fr.EXT_CARETEAM, "valueReference": {"reference": f"CareTeam/{team}"}}],
            "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
            "code": [{"coding": [{"system": fr.CARETEAM_ROLE_SYSTEM, "code": role}]}]}


def unique(prefix: str = "nurse-new") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_practitioner(c, admin: dict, username: str, **kw) -> str:
    r = c.post("/organization/Practitioner", json=new_practitioner(username, **kw), headers=bearer(admin))
    assert r.status_code == 201, r.text
    Practitioner.model_validate(r.json())
    assert r.headers["Location"].endswith(f"/organization/Practitioner/{r.json()['id']}/_history/1")
    return r.json()["id"]


def add_to_team(c, admin: dict, practitioner_id: str, team: str, role: str = "monitoringAssistor") -> str:
    r = c.post("/organization/PractitionerRole", json=new_role(practitioner_id, team, role), headers=bearer(admin))
    assert r.status_code == 201, r.text
    PractitionerRole.model_validate(r.json())
    assert r.json()["id"] == role_id(practitioner_id, team, role)
    return r.json()["id"]


def refused_rescope(c, tokens: dict, code: str = "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED", **context) -> None:
    r = c.post(TOKEN_PATH.format(realm="ehealth"), data={"grant_type": "refresh_token",
                                                        "refresh_token": tokens["refresh_token"], **context})
    outcome(r, 403, code)


def test_admin_adds_a_nurse_who_can_then_work_in_the_team(server):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        username = unique()
        pid = create_practitioner(c, admin, username)

        # The account exists at once (password "twin"), but without a membership there is no team to act for.
        nurse_tokens = login(c, "ehealth", username)
        refused_rescope(c, nurse_tokens, care_team_id=w.a.team)

        prr = add_to_team(c, admin, pid, w.a.team)
        nurse = rescope(c, "ehealth", login(c, "ehealth", username), care_team_id=w.a.team)
        r = c.get("/task/Task", params={"responsible": f"CareTeam/{w.a.team}", "status": "ready",
                                        "_sort": "-priority"}, headers=bearer(nurse))
        assert r.status_code == 200, r.text
        Bundle.model_validate(r.json())
        r = c.get(f"/careplan/EpisodeOfCare/e-{w.a.patient.removeprefix('p-')}", headers=bearer(nurse))
        assert r.status_code == 200, r.text

        # The organisation's list of memberships shows it, as a valid PractitionerRole.
        r = c.get("/organization/PractitionerRole", params={"organization": f"Organization/{w.a.org}",
                                                            "practitioner": f"Practitioner/{pid}"},
                  headers=bearer(admin))
        assert r.status_code == 200, r.text
        bundle = r.json()
        Bundle.model_validate(bundle)
        assert bundle["total"] == 1 and [e["resource"]["id"] for e in bundle["entry"]] == [prr]
        PractitionerRole.model_validate(bundle["entry"][0]["resource"])

        # The stored CareTeam lists the new member (read by an administrator scoped to the team).
        admin_team = rescope(c, "ehealth", login(c, "ehealth", w.a.admin), care_team_id=w.a.team)
        r = c.get(f"/organization/CareTeam/{w.a.team}", headers=bearer(admin_team))
        assert r.status_code == 200, r.text
        team = r.json()
        CareTeam.model_validate(team)
        assert any(p["member"]["reference"].endswith(f"/Practitioner/{pid}") for p in team["participant"])


def test_a_given_password_replaces_the_default(server):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        username = unique()
        create_practitioner(c, admin, username, password="s3cret-pw")
        assert c.post(TOKEN_PATH.format(realm="ehealth"),
                      data={"grant_type": "password", "username": username, "password": "twin"}).status_code == 401
        assert login(c, "ehealth", username, "s3cret-pw")["access_token"]
        # a practitioner logs in in realm ehealth only
        r = c.post(TOKEN_PATH.format(realm="nemlogin"),
                   data={"grant_type": "password", "username": username, "password": "s3cret-pw"})
        outcome(r, 401, "AUTH_INVALID_CREDENTIALS")


def test_admin_cannot_manage_another_organisations_staff(server):
    w = world()
    with server.client() as c:
        admin_a = admin_token(c, w.a)
        pid = create_practitioner(c, admin_a, unique())
        # A team of organisation B.
        outcome(c.post("/organization/PractitionerRole", json=new_role(pid, w.b.team), headers=bearer(admin_a)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # B's nurse into A's team.
        outcome(c.post("/organization/PractitionerRole", json=new_role(w.b.nurse_id, w.a.team),
                       headers=bearer(admin_a)), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # Naming B as the organisation.
        body = new_role(pid, w.a.team) | {"organization": {"reference": f"Organization/{w.b.org}"}}
        outcome(c.post("/organization/PractitionerRole", json=body, headers=bearer(admin_a)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # B's memberships are not A's to list, nor to remove.
        outcome(c.get("/organization/PractitionerRole", params={"organization": f"Organization/{w.b.org}"},
                      headers=bearer(admin_a)), 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        b_nurse_role = role_id(w.b.nurse_id, w.b.team, "monitoringAssistor")
        outcome(c.delete(f"/organization/PractitionerRole/{b_nurse_role}", headers=bearer(admin_a)), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        # Nor can A's administrator scope a token to B.
        refused_rescope(c, login(c, "ehealth", w.a.admin), organization_id=w.b.org)
        # B's administrator can list B's (seeded) memberships, and they validate.
        r = c.get("/organization/PractitionerRole", params={"organization": f"Organization/{w.b.org}"},
                  headers=bearer(admin_token(c, w.b)))
        assert r.status_code == 200, r.text
        Bundle.model_validate(r.json())
        ids = [e["resource"]["id"] for e in r.json()["entry"]]
        assert b_nurse_role in ids
        for e in r.json()["entry"]:
            PractitionerRole.model_validate(e["resource"])
            assert e["resource"]["organization"]["reference"].endswith(f"/Organization/{w.b.org}")


def test_removing_the_membership_ends_access_at_once(server):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        username = unique()
        pid = create_practitioner(c, admin, username)
        prr = add_to_team(c, admin, pid, w.a.team)
        nurse_tokens = login(c, "ehealth", username)
        nurse = rescope(c, "ehealth", nurse_tokens, care_team_id=w.a.team)
        # While a member, the nurse's token is in context; she just lacks user-management permissions.
        params = {"organization": f"Organization/{w.a.org}"}
        outcome(c.get("/organization/PractitionerRole", params=params, headers=bearer(nurse)), 403,
                "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")

        r = c.delete(f"/organization/PractitionerRole/{prr}", headers=bearer(admin))
        assert r.status_code == 200, r.text
        OperationOutcome.model_validate(r.json())
        assert r.json()["issue"][0]["severity"] == "information"

        # The same, unexpired token now fails on every route that re-checks membership …
        outcome(c.get("/organization/PractitionerRole", params=params, headers=bearer(nurse)), 403,
                "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED")
        outcome(c.get("/audit/AuditEvent", headers=bearer(nurse)), 403, "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED")
        outcome(c.post("/organization/Practitioner", json=new_practitioner(unique()), headers=bearer(nurse)), 403,
                "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED")
        # … and the team can no longer be chosen.
        refused_rescope(c, nurse_tokens, care_team_id=w.a.team)
        refused_rescope(c, nurse_tokens, organization_id=w.a.org)

        # Gone from the list and from the CareTeam; removing it again is a 404.
        r = c.get("/organization/PractitionerRole", params={**params, "practitioner": f"Practitioner/{pid}"},
                  headers=bearer(admin))
        assert r.status_code == 200 and r.json()["total"] == 0 and "entry" not in r.json()
        outcome(c.delete(f"/organization/PractitionerRole/{prr}", headers=bearer(admin)), 404, "RESOURCE_NOT_FOUND")
        admin_team = rescope(c, "ehealth", login(c, "ehealth", w.a.admin), care_team_id=w.a.team)
        team = c.get(f"/organization/CareTeam/{w.a.team}", headers=bearer(admin_team)).json()
        assert not any(p["member"]["reference"].endswith(f"/Practitioner/{pid}") for p in team.get("participant", []))

        # Membership can be given back: the same id again, and the same access.
        assert add_to_team(c, admin, pid, w.a.team) == prr
        assert rescope(c, "ehealth", nurse_tokens, care_team_id=w.a.team)["access_token"]


def test_removed_nurse_cannot_read_the_worklist_with_a_live_token(server):
    """The task service re-checks membership too (``Service.require_membership``)."""
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        username = unique()
        pid = create_practitioner(c, admin, username)
        prr = add_to_team(c, admin, pid, w.a.team)
        nurse = rescope(c, "ehealth", login(c, "ehealth", username), care_team_id=w.a.team)
        assert c.delete(f"/organization/PractitionerRole/{prr}", headers=bearer(admin)).status_code == 200
        outcome(c.get("/task/Task", params={"responsible": f"CareTeam/{w.a.team}"}, headers=bearer(nurse)), 403,
                "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED")


def test_seeded_memberships_can_be_listed_and_paged(server):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        r = c.get("/organization/PractitionerRole", params={"organization": f"Organization/{w.a.org}",
                                                            "_count": "1"}, headers=bearer(admin))
        assert r.status_code == 200, r.text
        first = r.json()
        Bundle.model_validate(first)
        assert len(first["entry"]) == 1 and first["total"] >= 2
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        second = c.get(next_url.replace(server.base_url, ""), headers=bearer(admin)).json()
        assert second["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]
        r = c.get("/organization/PractitionerRole", params={"organization": f"Organization/{w.a.org}",
                                                            "role": "monitoringAssistor",
                                                            "practitioner": w.a.nurse_id}, headers=bearer(admin))
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [role_id(w.a.nurse_id, w.a.team,
                                                                            "monitoringAssistor")]


def _role_with(**change):
    def make(pid: str, team: str) -> dict:
        body = new_role(pid, team)
        for key, value in change.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body
    return make


@pytest.mark.parametrize("make,status,code", [
    (lambda pid, team: {**new_role(pid, team), "resourceType": "Practitioner"}, 400, "REQUEST_WRONG_RESOURCE_TYPE"),
    (lambda pid, team: ["not", "an", "object"], 400, "REQUEST_WRONG_RESOURCE_TYPE"),
    (_role_with(practitioner=None), 422, "ORGANIZATION_REFERENCE_MISSING"),
    (_role_with(practitioner={"reference": "Patient/p-0"}), 422, "ORGANIZATION_INVALID_REFERENCE"),
    (_role_with(practitioner={"reference": "Practitioner/no-such-one"}), 422, "ORGANIZATION_UNKNOWN_REFERENCE"),
    (_role_with(extension=None), 422, "ORGANIZATION_PRACTITIONERROLE_CARETEAM_MISSING"),
    (_role_with(extension="nope"), 400, "REQUEST_INVALID_RESOURCE"),
    (_role_with(extension=[{"url": fr.EXT_CARETEAM, "valueReference": {"reference": "CareTeam/ct-999"}}]), 422,
     "ORGANIZATION_UNKNOWN_REFERENCE"),
    (_role_with(code=[{"coding": [{"system": fr.CARETEAM_ROLE_SYSTEM, "code": "auditor"}]}]), 422,
     "ORGANIZATION_ROLE_NOT_ASSIGNABLE"),
    (_role_with(code=None), 422, "ORGANIZATION_PRACTITIONERROLE_ROLE_MISSING"),
])
def test_bad_practitioner_roles_are_refused(server, make, status, code):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        outcome(c.post("/organization/PractitionerRole", json=make(w.a.nurse_id, w.a.team), headers=bearer(admin)),
                status, code)


@pytest.mark.parametrize("change,status,code", [
    (lambda b: b.update(resourceType="Patient"), 400, "REQUEST_WRONG_RESOURCE_TYPE"),
    (lambda b: b.update(identifier=[]), 422, "ORGANIZATION_PRACTITIONER_USERNAME_MISSING"),
    (lambda b: b.update(identifier=[{"system": fr.USERNAME_SYSTEM, "value": "a b"}]), 422,
     "ORGANIZATION_PRACTITIONER_USERNAME_INVALID"),
    (lambda b: b.update(identifier=[{"system": fr.USERNAME_SYSTEM, "value": 42}]), 422,
     "ORGANIZATION_PRACTITIONER_USERNAME_INVALID"),
    (lambda b: b.update(identifier={"system": fr.USERNAME_SYSTEM}), 400, "REQUEST_INVALID_RESOURCE"),
    (lambda b: b.update(name=[{"text": "   "}]), 422, "ORGANIZATION_PRACTITIONER_NAME_INVALID"),
    (lambda b: b["extension"].append({"url": EXT_ACCOUNT_ROLE, "valueCode": "auditor"}), 422,
     "ORGANIZATION_ROLE_NOT_ASSIGNABLE"),
    (lambda b: b["extension"].append({"url": EXT_ACCOUNT_ROLE, "valueString": 7}), 422,
     "ORGANIZATION_INVALID_EXTENSION"),
    (lambda b: b["extension"].append({"url": EXT_INITIAL_PASSWORD, "valueString": "abc"}), 422,
     "ORGANIZATION_PRACTITIONER_PASSWORD_INVALID"),
])
def test_bad_practitioners_are_refused(server, change, status, code):
    w = world()
    body = new_practitioner(unique())
    change(body)
    with server.client() as c:
        outcome(c.post("/organization/Practitioner", json=body, headers=bearer(admin_token(c, w.a))), status, code)


def test_who_may_manage_users(server):
    w = world()
    with server.client() as c:
        admin = admin_token(c, w.a)
        body = new_practitioner(unique())
        outcome(c.post("/organization/Practitioner", json=body), 401, "SECURITY_TOKEN_MISSING")
        nurse = rescope(c, "ehealth", login(c, "ehealth", w.a.nurse), care_team_id=w.a.team)
        outcome(c.post("/organization/Practitioner", json=body, headers=bearer(nurse)), 403,
                "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        citizen = login(c, "nemlogin", f"citizen-{w.a.patient.removeprefix('p-')}")
        outcome(c.post("/organization/Practitioner", json=body, headers=bearer(citizen)), 403,
                "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        # An administrator must first scope the token to their organisation.
        outcome(c.post("/organization/Practitioner", json=body, headers=bearer(login(c, "ehealth", w.a.admin))), 403,
                "SECURITY_TOKEN_CONTEXT_MISSING")
        # Usernames are unique across organisations (one accounts table, as one SEB).
        r = c.post("/organization/Practitioner", json=new_practitioner(w.b.nurse), headers=bearer(admin))
        outcome(r, 409, "ORGANIZATION_PRACTITIONER_USERNAME_IN_USE")
        outcome(c.post("/organization/PractitionerRole", json=new_role(w.a.nurse_id, w.a.team), headers=bearer(admin)),
                409, "ORGANIZATION_PRACTITIONERROLE_EXISTS")
        # Search must name the organisation; paging parameters are checked.
        outcome(c.get("/organization/PractitionerRole", headers=bearer(admin)), 403, "SECURITY_SEARCH_PARAMS_MANDATORY")
        outcome(c.get("/organization/PractitionerRole", params={"organization": "Patient/p-0"}, headers=bearer(admin)),
                400, "SEARCH_INVALID_REFERENCE")
        outcome(c.get("/organization/PractitionerRole", params={"organization": w.a.org, "_count": "0"},
                      headers=bearer(admin)), 400, "SEARCH_INVALID_COUNT")
        outcome(c.delete("/organization/PractitionerRole/prr-unknown", headers=bearer(admin)), 404,
                "RESOURCE_NOT_FOUND")
        # The organisation's last administrator membership stays (nobody could manage the staff after it).
        admins = c.get("/organization/PractitionerRole", params={"organization": w.a.org,
                                                                 "role": "careteamAdministrator"},
                       headers=bearer(admin)).json()
        assert admins["total"] == 1  # pilot-100: one team per organisation, one administrator
        outcome(c.delete(f"/organization/PractitionerRole/{admins['entry'][0]['resource']['id']}",
                         headers=bearer(admin)), 409, "ORGANIZATION_LAST_ADMINISTRATOR")
        outcome(c.post("/organization/Practitioner", content=b"{", headers=bearer(admin)), 400,
                "REQUEST_MALFORMED_JSON")
