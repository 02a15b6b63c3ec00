"""Enrolment (``$create-episode-of-care``) and threshold changes by clinicians, over HTTP on SQLite and PostgreSQL.

A care team's enroller enrols a new citizen, who can then log in and submit; a clinician of the team
tightens the citizen's thresholds and the next submission is triaged with them. Refused requests
store nothing; other teams, plain nurses and citizens are refused. Every returned resource is
validated with ``fhir.resources.R4B``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import math
import random
import time
import uuid

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.episodeofcare import EpisodeOfCare
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest

from tests.conftest import SCENARIOS
from tests.server.test_api import bearer, login, outcome, rescope
from tests.server.test_user_management import add_to_team, admin_token, create_practitioner, unique, world
from twin.scenario import load_scenario
from twin.seed import build_seed_rows
from twin.server import fhir as fr
from twin.server.routes_enrolment import PLAN_DEFINITIONS
from twin.server.storage import Storage

MODELS = {"Patient": Patient, "EpisodeOfCare": EpisodeOfCare, "CarePlan": CarePlan, "ServiceRequest": ServiceRequest,
          "Condition": Condition, "Provenance": Provenance}
OP = "/careplan/$create-episode-of-care"
SUNDHEDSLOVEN = "http://ehealth.sundhed.dk/policy/dk/sundhedsloven"
CLINICIAN_ROLES = ("citizenEnroller", "monitoring_adjuster", "monitoringAssistor")


def new_cpr() -> str:
    """A CPR-like number no seeded citizen has (born on 1 January 1901)."""
    return f"010101{random.randrange(10_000):04d}"


def enrolment(cpr: str | None = "new", status: str = "active", plan: str = "copd", patient_ref: str | None = None,
              **changes) -> dict:
    """A ``$create-episode-of-care`` body: Patient (unless ``patient_ref``), Condition, EpisodeOfCare, Provenance."""
    p, c, e, v = (f"urn:uuid:{uuid.uuid4()}" for _ in range(4))
    patient = {"resourceType": "Patient", "name": [{"family": "Borger", "given": ["Ny"]}], "gender": "female",
               "birthDate": "1950-05-01"}
    if cpr is not None:
        patient["identifier"] = [{"system": fr.CPR_SYSTEM, "value": new_cpr() if cpr == "new" else cpr}]
    subject = patient_ref or p
    condition = {"resourceType": "Condition", "code": {"coding": [{"system": fr.SKS_SYSTEM, "code": "DJ44"}]},
                 "subject": {"reference": subject}}
    episode = {"resourceType": "EpisodeOfCare", "status": status, "patient": {"reference": subject},
               "diagnosis": [{"condition": {"reference": c}}]}
    provenance = {"resourceType": "Provenance", "target": [{"reference": e}], "policy": [SUNDHEDSLOVEN],
                  "recorded": "2026-01-01T10:00:00+01:00"}
    resources = {"Patient": patient, "Condition": condition, "EpisodeOfCare": episode, "Provenance": provenance}
    for path, value in changes.items():  # e.g. EpisodeOfCare__status="finished"; value None removes
        type_, key = path.split("__")
        if value is None:
            resources[type_].pop(key, None)
        else:
            resources[type_][key] = value
    urls = {"Patient": p, "Condition": c, "EpisodeOfCare": e, "Provenance": v}
    entries = [{"fullUrl": urls[t], "resource": r} for t, r in resources.items() if not (t == "Patient" and patient_ref)]
    return {"resourceType": "Parameters", "parameter": [
        {"name": "episodeOfCareAndProvenances", "resource": {"resourceType": "Bundle", "type": "collection",
                                                              "entry": entries}},
        {"name": "planDefinition", "valueString": plan}]}


def post(c, tokens, body, representation: bool = True):
    headers = bearer(tokens) if tokens else {"Content-Type": "application/fhir+json"}
    if representation:
        headers["Prefer"] = "return=representation"
    return c.post(OP, json=body, headers=headers)


def stored(r) -> dict[str, list[dict]]:
    """The resources of a created enrolment, by type, each validated with its R4B model."""
    assert r.status_code == 201, r.text
    bundle = r.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction-response"
    out: dict[str, list[dict]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        MODELS[resource["resourceType"]].model_validate(resource)
        assert entry["response"]["location"].startswith(entry["fullUrl"] + "/_history/")
        out.setdefault(resource["resourceType"], []).append(resource)
    return out


async def _count(database: str, sql: str) -> int:
    storage = Storage.connect(database)
    await storage.open()
    try:
        async with storage.transaction() as tx:
            return int((await tx.fetch(sql))[0][0])
    finally:
        await storage.close()


def enrolment_rows(server) -> int:
    """Rows only an enrolment writes (triage rows of other tests may be arriving meanwhile)."""
    return asyncio.run(_count(server.database, "SELECT COUNT(*) FROM resources WHERE type IN ('Patient', "
                                               "'EpisodeOfCare', 'CarePlan', 'ServiceRequest', 'Condition')")) \
        + asyncio.run(_count(server.database, "SELECT COUNT(*) FROM accounts"))


@functools.cache
def _clinicians(server_url: str) -> dict:
    """A clinician (enroller + adjuster + nurse) in a team of organisation A and one in organisation B."""
    import httpx

    w = world()
    out = {}
    with httpx.Client(base_url=server_url, timeout=10.0) as c:
        for name, side in (("a", w.a), ("b", w.b)):
            admin = admin_token(c, side)
            username = unique("clinician")
            pid = create_practitioner(c, admin, username, roles=CLINICIAN_ROLES)
            add_to_team(c, admin, pid, side.team)
            out[name] = username
    return out


@pytest.fixture
def tokens(server):
    """Fresh tokens: the clinicians of team A and B, the seeded nurse of team A (no new roles), citizen 0."""
    w = world()
    names = _clinicians(server.base_url)
    with server.client() as c:
        return {"a": rescope(c, "ehealth", login(c, "ehealth", names["a"]), care_team_id=w.a.team),
                "b": rescope(c, "ehealth", login(c, "ehealth", names["b"]), care_team_id=w.b.team),
                "nurse": rescope(c, "ehealth", login(c, "ehealth", w.a.nurse), care_team_id=w.a.team),
                "citizen": login(c, "nemlogin", "citizen-0")}


# -------------------------------------------------------------------------------- enrolment
def test_enrolled_citizen_can_log_in_and_submit(server, tokens):
    w = world()
    with server.client() as c:
        made = stored(post(c, tokens["a"], enrolment()))
        (patient,), (episode,), (plan,) = made["Patient"], made["EpisodeOfCare"], made["CarePlan"]
        assert episode["status"] == "active" and plan["status"] == "active"
        assert episode["team"][0]["reference"].endswith(f"/CareTeam/{w.a.team}")
        assert episode["managingOrganization"]["reference"].endswith(f"/Organization/{w.a.org}")
        assert episode["diagnosis"][0]["condition"]["reference"].endswith(f"/Condition/{made['Condition'][0]['id']}")
        requests = {fr.service_request_measurement(sr): sr for sr in made["ServiceRequest"]}
        assert set(requests) == {*PLAN_DEFINITIONS["copd"].ranges, "questionnaire"}
        assert fr.ranges_from_service_request(requests["spo2"]).yellow_low == 91.0
        assert {a["reference"]["reference"].rsplit("/", 1)[1] for a in plan["activity"]} == \
            {sr["id"] for sr in made["ServiceRequest"]}
        assert len(made["Provenance"]) == 2  # the client's privacy Provenance and the server's origin Provenance
        username = next(i["value"] for i in patient["identifier"] if i["system"] == fr.USERNAME_SYSTEM)
        assert username == f"citizen-{patient['id']}"

        # The new citizen logs in (password "twin"), the token is scoped to the new episode, and submits.
        citizen = login(c, "nemlogin", username)
        r = c.get("/careplan/EpisodeOfCare", params={"patient": f"Patient/{patient['id']}"}, headers=bearer(citizen))
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [episode["id"]]
        body = fr.submission(fr.Refs(server.base_url), str(uuid.uuid4()), patient["id"], episode["id"],
                             {m: sr["id"] for m, sr in requests.items()}, "q-copd", {"spo2": 95, "pulse": 70},
                             {"dyspnoea": False}, dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
        r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen))
        assert r.status_code == 201, r.text
        # The Condition is readable on the careplan service by the team, the episode by the citizen.
        cond = c.get(f"/careplan/Condition/{made['Condition'][0]['id']}", headers=bearer(tokens["a"]))
        assert cond.status_code == 200, cond.text
        Condition.model_validate(cond.json())

        # Enrolling the same citizen again with the same team is refused, and stores nothing.
        before = enrolment_rows(server)
        again = enrolment(cpr=next(i["value"] for i in patient["identifier"] if i["system"] == fr.CPR_SYSTEM))
        outcome(post(c, tokens["a"], again), 409, "EPISODEOFCARE_CREATE_ALREADY_ENROLLED")
        assert enrolment_rows(server) == before


def test_known_citizen_is_reused_by_cpr_and_planned_episodes_stay_draft(server, tokens):
    w = world()
    rows, *_ = build_seed_rows(load_scenario(SCENARIOS / "pilot-100.toml"), "http://127.0.0.1:1")
    seeded = next(json.loads(r.body) for r in rows if r.type == "Patient" and r.id == w.b.patient)
    with server.client() as c:
        r = post(c, tokens["a"], enrolment(cpr=seeded["identifier"][0]["value"], status="planned"))
        made = stored(r)
        assert [p["id"] for p in made["Patient"]] == [w.b.patient]
        assert r.json()["entry"][0]["response"]["status"] == "200 OK"  # reused, not created
        assert made["EpisodeOfCare"][0]["status"] == "planned"
        assert {sr["status"] for sr in made["ServiceRequest"]} == {"draft"} and made["CarePlan"][0]["status"] == "draft"
        # pilot-100 seeds no heart-failure cohort: that plan's Questionnaire is missing, nothing is stored
        before = enrolment_rows(server)
        outcome(post(c, tokens["a"], enrolment(plan="heart-failure")), 422,
                "CAREPLAN_APPLY_CAN_NOT_FIND_ACTIVITY_DEFINITION")
        assert enrolment_rows(server) == before
        # Without Prefer: return=representation the answer holds locations only.
        r = post(c, tokens["a"], enrolment(), representation=False)
        assert r.status_code == 201, r.text
        Bundle.model_validate(r.json())
        assert all("resource" not in e and e["response"]["location"] for e in r.json()["entry"])
        assert r.headers["Location"].split("/careplan/EpisodeOfCare/")[1].endswith("/_history/1")


def _bundle(body: dict) -> dict:
    return body["parameter"][0]["resource"]


def _add_entry(resource: dict):
    def change(body):
        _bundle(body)["entry"].append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource})
    return change


@pytest.mark.parametrize("change,status,code", [
    (lambda b: _add_entry({"resourceType": "EpisodeOfCare", "status": "planned"})(b), 422,
     "EPISODEOFCARE_CREATE_WRONG_EOC_COUNT"),
    (lambda b: _add_entry({"resourceType": "Observation"})(b), 422, "EPISODEOFCARE_CREATE_UNSUPPORTED_RESOURCE_TYPE"),
    (lambda b: _bundle(b)["entry"][2]["resource"].update(status="finished"), 422,
     "EPISODEOFCARE_CREATE_EPISODE_OF_CARE_IN_NON_PLANNED_STATUS"),
    (lambda b: _bundle(b)["entry"][1]["resource"].update(subject={"reference": "Patient/p-3"}), 422,
     "EPISODEOFCARE_CREATE_INCORRECT_CONDITION_SUBJECT"),
    (lambda b: _bundle(b)["entry"][3]["resource"].update(target=[{"reference": "urn:uuid:x"}]), 422,
     "EPISODEOFCARE_CREATE_INCORRECT_PROVENANCE_TARGET"),
    (lambda b: _bundle(b)["entry"][3]["resource"].update(policy=["http://example.org/other"]), 422,
     "EPISODEOFCARE_CREATE_NO_REQUIRED_PROVENANCE_POLICIES"),
    (lambda b: _bundle(b)["entry"][0]["resource"].update(deceasedBoolean=True), 422,
     "EPISODEOFCARE_CREATE_PATIENT_MUST_NOT_BE_DECEASED"),
    (lambda b: _bundle(b)["entry"][0]["resource"].pop("identifier"), 422, "PATIENT_CREATE_CPR_MISSING"),
    (lambda b: b["parameter"][1].update(valueString="diabetes"), 422, "CAREPLAN_APPLY_NO_PLANDEFINITION"),
    (lambda b: b["parameter"].pop(1), 400, "CAREPLAN_APPLY_PLAN_DEFINITION_REFERENCE_NOT_SPECIFIED"),
    (lambda b: b["parameter"].append({"name": "weekdays", "valueString": "mon+funday"}), 400,
     "REQUEST_INVALID_PARAMETERS"),
    (lambda b: _bundle(b).update(type="searchset"), 400, "REQUEST_INVALID_BUNDLE"),
])
def test_refused_enrolments_store_nothing(server, tokens, change, status, code):
    body = enrolment()
    change(body)
    before = enrolment_rows(server)
    with server.client() as c:
        outcome(post(c, tokens["a"], body), status, code)
    assert enrolment_rows(server) == before


def test_enrolment_access(server, tokens):
    """Own team: 201 (above). Another team in the episode, a plain nurse, a citizen, no token: refused."""
    w = world()
    with server.client() as c:
        other = enrolment(EpisodeOfCare__team=[{"reference": f"CareTeam/{w.b.team}"}])
        outcome(post(c, tokens["a"], other), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        other_org = enrolment(EpisodeOfCare__managingOrganization={"reference": f"Organization/{w.b.org}"})
        outcome(post(c, tokens["a"], other_org), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(post(c, tokens["nurse"], enrolment()), 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        outcome(post(c, tokens["citizen"], enrolment()), 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        outcome(post(c, None, enrolment()), 401, "SECURITY_TOKEN_MISSING")
        unscoped = login(c, "ehealth", _clinicians(server.base_url)["a"])
        outcome(post(c, unscoped, enrolment()), 403, "SECURITY_TOKEN_CONTEXT_MISSING")


def test_plan_definitions_follow_the_national_standards():
    """The server's plans carry the standard thresholds of twin/defaults (the scenario's rule sets)."""
    scenario = load_scenario(SCENARIOS / "national-growth.toml")
    for plan, rules in (("copd", "copd-national"), ("heart-failure", "heart-failure-national")):
        thresholds = scenario.rules[rules].thresholds
        for m, ranges in PLAN_DEFINITIONS[plan].ranges.items():
            if m not in thresholds:
                assert ranges is None, (plan, m)
                continue
            t = thresholds[m]
            expected = (t.red_low, t.yellow_low, t.yellow_high, t.red_high)
            if all(math.isinf(b) for b in expected):
                assert ranges is None, (plan, m)
            else:
                assert (ranges.red_low, ranges.yellow_low, ranges.yellow_high, ranges.red_high) == expected, (plan, m)


# ------------------------------------------------------------------------------ thresholds
def _enrol(c, tokens) -> tuple[dict, dict[str, dict], dict]:
    """A newly enrolled citizen: (Patient, ServiceRequests by measurement, the citizen's tokens)."""
    made = stored(post(c, tokens["a"], enrolment()))
    patient = made["Patient"][0]
    citizen = login(c, "nemlogin", f"citizen-{patient['id']}")
    return patient, {fr.service_request_measurement(sr): sr for sr in made["ServiceRequest"]}, citizen


def _submit_and_wait(c, server, tokens, patient, requests, citizen, spo2: float) -> dict:
    """Submit one SpO2 reading and wait (bounded) for its triage Task."""
    w = world()
    episode = requests["spo2"]["extension"][0]["valueReference"]["reference"].rsplit("/", 1)[1]
    body = fr.submission(fr.Refs(server.base_url), str(uuid.uuid4()), patient["id"], episode,
                         {m: sr["id"] for m, sr in requests.items()}, None, {"spo2": spo2}, {},
                         dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
    r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(citizen))
    assert r.status_code == 201, r.text
    observation = r.json()["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    deadline = time.monotonic() + 10
    while True:  # the triage runs off the request path: wait for the real worker, bounded
        r = c.get("/task/Task", params={"responsible": f"CareTeam/{w.a.team}", "patient": f"Patient/{patient['id']}",
                                        "_include": "Task:focus", "_count": "200"}, headers=bearer(tokens["a"]))
        assert r.status_code == 200, r.text
        Bundle.model_validate(r.json())
        found = [e["resource"] for e in r.json().get("entry", []) if e["resource"]["resourceType"] == "ClinicalImpression"
                 and observation in json.dumps(e["resource"])]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert found, "no triage for the submission"
    impression = found[0]
    tasks = [e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Task"
             and e["resource"]["focus"]["reference"].endswith(f"/ClinicalImpression/{impression['id']}")]
    return {"finding": fr.finding_from_clinical_impression(impression).colour, "priority": tasks[0]["priority"]}


def _range_index(sr: dict, type_code: str) -> tuple[int, dict[str, int]]:
    """(index of the RELRAL/RELGAL extension, index of each of its parts)."""
    for i, ext in enumerate(sr["extension"]):
        parts = {p["url"]: j for j, p in enumerate(ext.get("extension", []))}
        if ext["url"] == fr.EXT_REFERENCE_RANGE and \
                ext["extension"][parts["type"]]["valueCodeableConcept"]["coding"][0]["code"] == type_code:
            return i, parts
    raise AssertionError(f"no {type_code} range")


def patch(c, tokens, sr_id: str, ops: list, if_match: str | None = None):
    headers = {**bearer(tokens), "Content-Type": "application/json-patch+json"}
    if if_match:
        headers["If-Match"] = if_match
    return c.patch(f"/careplan/ServiceRequest/{sr_id}", json=ops, headers=headers)


def _set_bound(sr: dict, type_code: str, bound: str, value: float) -> dict:
    out = json.loads(json.dumps(sr))
    i, parts = _range_index(out, type_code)
    out["extension"][i]["extension"][parts[bound]]["valueQuantity"]["value"] = value
    return out


def test_tightened_thresholds_triage_the_next_submission(server, tokens):
    with server.client() as c:
        patient, requests, citizen = _enrol(c, tokens)
        spo2 = requests["spo2"]
        assert _submit_and_wait(c, server, tokens, patient, requests, citizen, 93) == \
            {"finding": "green", "priority": "routine"}  # the standard: yellow below 91

        # yellow below 94 (JSON Patch on the RELGAL low, with the ETag of the read)
        i, parts = _range_index(spo2, "RELGAL")
        r = patch(c, tokens["a"], spo2["id"], [{"op": "replace", "value": 94,
                                                "path": f"/extension/{i}/extension/{parts['low']}/valueQuantity/value"}],
                  'W/"1"')
        assert r.status_code == 200, r.text
        ServiceRequest.model_validate(r.json())
        assert r.headers["ETag"] == 'W/"2"' and fr.ranges_from_service_request(r.json()).yellow_low == 94
        requests["spo2"] = r.json()
        assert _submit_and_wait(c, server, tokens, patient, requests, citizen, 93) == \
            {"finding": "yellow", "priority": "urgent"}

        # red below 93.5 (PUT of the whole resource); a stale ETag is refused and changes nothing
        tightened = _set_bound(requests["spo2"], "RELRAL", "low", 93.5)
        headers = {**bearer(tokens["a"]), "If-Match": 'W/"1"'}
        outcome(c.put(f"/careplan/ServiceRequest/{spo2['id']}", json=tightened, headers=headers), 412,
                "REQUEST_VERSION_CONFLICT")
        headers["If-Match"] = 'W/"2"'
        r = c.put(f"/careplan/ServiceRequest/{spo2['id']}", json=tightened, headers=headers)
        assert r.status_code == 200, r.text
        ServiceRequest.model_validate(r.json())
        assert r.headers["ETag"] == 'W/"3"' and r.json()["meta"]["versionId"] == "3"
        assert _submit_and_wait(c, server, tokens, patient, requests, citizen, 93) == \
            {"finding": "red", "priority": "asap"}

        # The red alert the triage wrote to the team is in the team's inbox (recipient column filled).
        w = world()
        r = c.get("/patient/Communication", params={"recipient": f"CareTeam/{w.a.team}", "patient":
                                                    f"Patient/{patient['id']}"}, headers=bearer(tokens["a"]))
        assert r.status_code == 200, r.text
        Bundle.model_validate(r.json())
        alerts = [e["resource"] for e in r.json().get("entry", [])]
        assert alerts and all(Communication.model_validate(m) for m in alerts)
        assert alerts[0]["payload"][0]["contentString"].startswith("Red alert")


@pytest.fixture
def enrolled(server, tokens):
    with server.client() as c:
        return _enrol(c, tokens)


@pytest.mark.parametrize("edit,code", [
    (lambda sr: _set_bound(sr, "RELGAL", "low", 100), "SERVICEREQUEST_INVALID_REFERENCE_RANGE"),  # low = high
    (lambda sr: _set_bound(sr, "RELRAL", "low", 30), "SERVICEREQUEST_INVALID_REFERENCE_RANGE"),  # below the device
    (lambda sr: _set_bound(sr, "RELRAL", "low", 92), "SERVICEREQUEST_INVALID_REFERENCE_RANGE"),  # red inside yellow
    (lambda sr: {**sr, "status": "revoked"}, "SERVICEREQUEST_UPDATE_NOT_ALLOWED"),
    (lambda sr: {**sr, "occurrenceTiming": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}}},
     "SERVICEREQUEST_UPDATE_NOT_ALLOWED"),
])
def test_invalid_threshold_changes_are_refused(server, tokens, enrolled, edit, code):
    _patient, requests, _citizen = enrolled
    spo2 = requests["spo2"]
    with server.client() as c:
        outcome(c.put(f"/careplan/ServiceRequest/{spo2['id']}", json=edit(spo2), headers=bearer(tokens["a"])), 422,
                code)
        r = c.get(f"/careplan/ServiceRequest/{spo2['id']}", headers=bearer(tokens["a"]))
        assert r.json()["meta"]["versionId"] == "1"  # nothing stored


def test_threshold_change_access_and_shape(server, tokens, enrolled):
    _patient, requests, _citizen = enrolled
    spo2, questionnaire = requests["spo2"], requests["questionnaire"]
    i, parts = _range_index(spo2, "RELGAL")
    ops = [{"op": "replace", "path": f"/extension/{i}/extension/{parts['low']}/valueQuantity/value", "value": 92}]
    with server.client() as c:
        outcome(patch(c, tokens["b"], spo2["id"], ops), 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(patch(c, tokens["nurse"], spo2["id"], ops), 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        outcome(patch(c, tokens["citizen"], spo2["id"], ops), 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
        outcome(c.put(f"/careplan/ServiceRequest/{spo2['id']}", json=spo2, headers=bearer(tokens["b"])), 403,
                "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT")
        outcome(patch(c, tokens["a"], "no-such-request", ops), 404, "RESOURCE_NOT_FOUND")
        outcome(patch(c, tokens["a"], spo2["id"], [{"op": "replace", "path": "/extension/99/url", "value": "x"}]), 422,
                "REQUEST_PATCH_PATH_NOT_FOUND")
        outcome(patch(c, tokens["a"], spo2["id"], [{"op": "test", "path": "/status", "value": "draft"}, *ops]), 422,
                "REQUEST_PATCH_TEST_FAILED")
        outcome(c.put(f"/careplan/ServiceRequest/{spo2['id']}", json={**spo2, "id": "other"},
                      headers=bearer(tokens["a"])), 400, "REQUEST_ID_MISMATCH")
        with_range = json.loads(json.dumps(questionnaire))
        with_range["extension"].append(spo2["extension"][i])
        outcome(c.put(f"/careplan/ServiceRequest/{questionnaire['id']}", json=with_range,
                      headers=bearer(tokens["a"])), 422, "SERVICEREQUEST_INVALID_REFERENCE_RANGE")
        # own team, no If-Match: applied to the current version
        r = patch(c, tokens["a"], spo2["id"], [{"op": "test", "path": "/status", "value": "active"}, *ops])
        assert r.status_code == 200, r.text
        ServiceRequest.model_validate(r.json())
        assert fr.ranges_from_service_request(r.json()).yellow_low == 92


# ------------------------------------------------------------------------------ storage migration
def test_migration_is_safe_to_repeat(server):
    """The schema migration (the guarded ALTER for Communication.recipient included) runs again on the
    live, seeded database without error, and the column is there."""
    async def run() -> bool:
        storage = Storage.connect(server.database)
        await storage.open()
        try:
            await storage.migrate()
            await storage.migrate()
            async with storage.transaction() as tx:
                return await tx.has_column("resources", "recipient")
        finally:
            await storage.close()

    assert asyncio.run(run())


def test_migration_adds_the_recipient_column_to_an_old_database(tmp_path):
    async def run() -> tuple[bool, bool]:
        storage = Storage.connect(f"sqlite:///{tmp_path / 'old.db'}")
        await storage.open()
        try:
            async with storage.transaction() as tx:  # the resources table as the first release made it
                await tx.execute("CREATE TABLE resources (type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT "
                                 "NULL, last_updated TEXT NOT NULL, patient TEXT, episode TEXT, team TEXT, org TEXT, "
                                 "status TEXT, code TEXT, effective TEXT, priority INTEGER, ident TEXT, body TEXT NOT "
                                 "NULL, PRIMARY KEY (type, id))")
                before = await tx.has_column("resources", "recipient")
            await storage.migrate()
            await storage.migrate()
            async with storage.transaction() as tx:
                return before, await tx.has_column("resources", "recipient")
        finally:
            await storage.close()

    assert asyncio.run(run()) == (False, True)
