"""Reading measurements back, over HTTP on SQLite and PostgreSQL: Observation search,
``$search-measurements`` (one nested Bundle per submission) and ``$get-patient-procedures`` (the
citizen's week of timing slots with what was submitted in each).

Citizen 0 submits three times in a past week (``2025-03-03`` …), so that other tests' submissions
(made now) never fall inside the searched windows. Every Bundle and Parameters the server returns is
validated with the R4B models of ``fhir.resources``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters

from tests.server.test_api import bearer, login, outcome, rescope, submission
from twin.server import auth

WEEK = dt.date(2025, 3, 3)  # a Monday
WINDOW = {"date": ["ge2025-03-03", "lt2025-03-17"]}  # the fixture's two weeks, whatever days they are
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SPO2, PULSE = "urn:oid:1.2.208.176.2.1|NPU03011", "urn:oid:1.2.208.176.2.1|NPU21692"


@dataclass
class Submitted:
    """What the fixture stored: per submission the ids by resource type, and when."""

    citizen: dict
    nurse: dict
    other_nurse: dict
    day_a: dt.date
    day_b: dt.date
    started: dt.datetime
    submissions: list[dict[str, list[str]]]

    @property
    def observations(self) -> set[str]:
        return {i for s in self.submissions for i in s.get("Observation", [])}


def _submit_at(c, server, tokens, values: dict, answers: dict, when: str) -> dict[str, list[str]]:
    body = submission(server, 0, values, answers)
    for entry in body["parameter"][0]["resource"]["entry"]:
        resource = entry["resource"]
        resource["effectiveDateTime" if resource["resourceType"] == "Observation" else "authored"] = when
    r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(tokens))
    assert r.status_code == 201, r.text
    ids: dict[str, list[str]] = {}
    for e in r.json()["entry"]:
        type_, id_ = e["response"]["location"].rsplit("/_history", 1)[0].rsplit("/", 2)[1:]
        ids.setdefault(type_, []).append(id_)
    return ids


@pytest.fixture(scope="module")
def data(server) -> Submitted:
    with server.client() as c:
        citizen = login(c, "nemlogin", "citizen-0")
        r = c.get("/careplan/EpisodeOfCare/e-0", headers=bearer(citizen))
        team = r.json()["team"][0]["reference"].rsplit("/ct-", 1)[1]
        other = "0" if team != "0" else "1"
        nurse = rescope(c, "ehealth", login(c, "ehealth", f"nurse-{team}-0"), care_team_id=f"ct-{team}")
        other_nurse = rescope(c, "ehealth", login(c, "ehealth", f"nurse-{other}-0"), care_team_id=f"ct-{other}")
        sr = c.get("/careplan/ServiceRequest/sr-0-spo2", headers=bearer(citizen)).json()
        days = sr["occurrenceTiming"]["repeat"].get("dayOfWeek") or list(WEEKDAYS)
        scheduled = [WEEK + dt.timedelta(days=k) for k in range(7) if WEEKDAYS[k] in days]
        day_a = scheduled[0]
        day_b = scheduled[1] if len(scheduled) > 1 else day_a + dt.timedelta(days=7)
        started = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=5)
        submissions = [
            _submit_at(c, server, citizen, {"spo2": 95, "pulse": 80}, {"dyspnoea": False}, f"{day_a}T08:00:00+00:00"),
            _submit_at(c, server, citizen, {"spo2": 93}, {}, f"{day_a}T18:00:00+00:00"),
            _submit_at(c, server, citizen, {"spo2": 96, "pulse": 70}, {}, f"{day_b}T09:00:00+00:00"),
        ]
    return Submitted(citizen, nurse, other_nurse, day_a, day_b, started, submissions)


def _search(c, tokens, **params):
    r = c.get("/measurement/Observation", params=params, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    bundle = r.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset"
    return bundle


def _ids(bundle) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


# ----------------------------------------------------------------------------- Observation search
def test_search_by_subject_patient_and_episode(server, data):
    with server.client() as c:
        for params in ({"subject": "Patient/p-0"}, {"patient": f"{server.base_url}/patient/Patient/p-0"},
                       {"subject": "p-0"}, {"episodeOfCare": "EpisodeOfCare/e-0"},
                       {"subject": "Patient/p-0", "episodeOfCare": "EpisodeOfCare/e-0"}):
            bundle = _search(c, data.citizen, **params, **WINDOW)
            assert set(_ids(bundle)) == data.observations, params
            assert bundle["total"] == len(data.observations) == 5
            assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
            assert {e["resource"]["subject"]["reference"] for e in bundle["entry"]} == \
                {f"{server.base_url}/patient/Patient/p-0"}


def test_search_by_code(server, data):
    spo2 = {i for s in data.submissions for i in s["Observation"][:1]}  # spo2 is each submission's first entry
    with server.client() as c:
        assert set(_ids(_search(c, data.citizen, subject="Patient/p-0", code=SPO2, **WINDOW))) == spo2
        assert set(_ids(_search(c, data.citizen, subject="Patient/p-0", code="NPU03011", **WINDOW))) == spo2
        pulse = _search(c, data.citizen, subject="Patient/p-0", code="NPU21692", **WINDOW)
        assert pulse["total"] == 2 and {e["resource"]["code"]["coding"][0]["code"] for e in pulse["entry"]} == \
            {"NPU21692"}
        both = _search(c, data.citizen, subject="Patient/p-0", code=f"{SPO2},{PULSE}", **WINDOW)
        assert set(_ids(both)) == data.observations
        system_only = _search(c, data.citizen, subject="Patient/p-0", code="urn:oid:1.2.208.176.2.1|", **WINDOW)
        assert set(_ids(system_only)) == data.observations
        assert _search(c, data.citizen, subject="Patient/p-0", code="http://loinc.org|NPU03011", **WINDOW)["total"] == 0
        # and: both codes at once is no Observation
        r = c.get("/measurement/Observation", params=[("subject", "Patient/p-0"), ("code", SPO2), ("code", PULSE)],
                  headers=bearer(data.citizen))
        assert r.status_code == 200 and r.json()["total"] == 0


def test_search_by_date_range_and_sort(server, data):
    a, b = data.day_a, data.day_b
    with server.client() as c:
        # A Danish calendar day (+01:00) holds both of day A's submissions (08:00Z and 18:00Z).
        day = _search(c, data.citizen, subject="Patient/p-0", date=f"eq{a}")
        assert set(_ids(day)) == set(data.submissions[0]["Observation"] + data.submissions[1]["Observation"])
        evening = _search(c, data.citizen, subject="Patient/p-0", date=[f"ge{a}T12:00:00Z", f"le{a}T23:59:59Z"])
        assert _ids(evening) == data.submissions[1]["Observation"]
        assert _ids(_search(c, data.citizen, subject="Patient/p-0", date=[f"gt{a}T08:00:00Z", f"lt{a}T18:00:00Z"])) == []
        exact = _search(c, data.citizen, subject="Patient/p-0", date=f"{a}T18:00:00+00:00")
        assert _ids(exact) == data.submissions[1]["Observation"]
        later = _search(c, data.citizen, subject="Patient/p-0", date=[f"gt{a}", f"le{b}"])
        assert set(_ids(later)) == set(data.submissions[2]["Observation"])
        newest = _search(c, data.citizen, subject="Patient/p-0", _sort="-date", **WINDOW)
        times = [e["resource"]["effectiveDateTime"] for e in newest["entry"]]
        assert times == sorted(times, reverse=True) and times[0].startswith(str(b))
        oldest = _search(c, data.citizen, subject="Patient/p-0", _sort="date", **WINDOW)
        assert [e["resource"]["effectiveDateTime"] for e in oldest["entry"]] == sorted(times)
        # An unescaped '+' in a raw query string arrives as a space; it still means +01:00.
        r = c.get(f"/measurement/Observation?subject=Patient/p-0&date=ge{a}T09:00:00+01:00&date=lt{a}T10:00:00+01:00",
                  headers=bearer(data.citizen))
        assert r.status_code == 200, r.text
        assert set(_ids(r.json())) == set(data.submissions[0]["Observation"])
        # ignored presentation parameters
        assert _search(c, data.citizen, subject="Patient/p-0", _format="json", _pretty="true", **WINDOW)["total"] == 5


def test_paging_follows_next_links_and_sees_every_observation_once(server, data):
    with server.client() as c:
        bundle = _search(c, data.citizen, subject="Patient/p-0", _count="1", **WINDOW)
        seen, pages = [], 0
        while True:
            pages += 1
            assert bundle["total"] == 5 and len(bundle["entry"]) == 1
            seen += _ids(bundle)
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not nxt:
                break
            assert pages < 10
            r = c.get(nxt[0], headers=bearer(data.citizen))
            assert r.status_code == 200, r.text
            bundle = r.json()
            Bundle.model_validate(bundle)
        assert pages == 5 and len(seen) == len(set(seen)) == 5 and set(seen) == data.observations
        beyond = _search(c, data.citizen, subject="Patient/p-0", _count="2", _offset="4", **WINDOW)
        assert len(beyond["entry"]) == 1 and not [lnk for lnk in beyond["link"] if lnk["relation"] == "next"]


def test_practitioners_search_their_teams_patients_only(server, data):
    with server.client() as c:
        assert set(_ids(_search(c, data.nurse, subject="Patient/p-0", **WINDOW))) == data.observations
        assert set(_ids(_search(c, data.nurse, episodeOfCare="EpisodeOfCare/e-0", **WINDOW))) == data.observations
        for params in ({"subject": "Patient/p-0"}, {"episodeOfCare": "EpisodeOfCare/e-0"}):
            outcome(c.get("/measurement/Observation", params=params, headers=bearer(data.other_nurse)), 403,
                    "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        fresh = login(c, "ehealth", "nurse-0-0")  # no care team chosen yet
        outcome(c.get("/measurement/Observation", params={"subject": "Patient/p-0"}, headers=bearer(fresh)), 403,
                "SECURITY_TOKEN_CONTEXT_MISSING")


@pytest.mark.parametrize("params,status,code", [
    ({}, 400, "GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED"),
    ({"code": SPO2}, 400, "GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED"),
    ({"subject": ""}, 400, "GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED"),
    ({"subject": "Patient/p-1"}, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ({"episodeOfCare": "EpisodeOfCare/e-1"}, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ({"episodeOfCare": "EpisodeOfCare/no-such-episode"}, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ({"subject": "Patient/p-0", "patient": "Patient/p-1"}, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ({"subject": "Patient/p-0", "date": "2025-13-45"}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "date": "ge03/03/2025"}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "date": "ne2025-03-03"}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "date": ""}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "date": "ge2025-03-03T10:00:00+25:00"}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "date": "ge2025-03-03' OR '1'='1"}, 400, "SEARCH_INVALID_DATE"),
    ({"subject": "Patient/p-0", "foo": "bar"}, 400, "SEARCH_UNKNOWN_PARAMETER"),
    ({"subject": "Patient/p-0", "value-quantity": "gt90"}, 400, "SEARCH_UNKNOWN_PARAMETER"),
    ({"subject": "Patient/p-0", "code:text": "pulse"}, 400, "SEARCH_UNSUPPORTED_MODIFIER"),
    ({"subject": "Patient/p-0", "_sort": "value"}, 400, "SEARCH_INVALID_SORT"),
    ({"subject": "Patient/p-0", "_count": "0"}, 400, "SEARCH_INVALID_COUNT"),
    ({"subject": "Patient/p-0", "_count": "abc"}, 400, "SEARCH_INVALID_COUNT"),
    ({"subject": "Patient/p-0", "_offset": "-1"}, 400, "SEARCH_INVALID_OFFSET"),
    ({"subject": "Patient/p-0", "code": ","}, 400, "SEARCH_INVALID_TOKEN"),
    ({"subject": "Practitioner/pr-0-0"}, 400, "SEARCH_INVALID_REFERENCE"),
    ({"subject": "' OR 1=1--"}, 400, "SEARCH_INVALID_REFERENCE"),
])
def test_bad_searches_are_refused_with_a_code(server, data, params, status, code):
    with server.client() as c:
        outcome(c.get("/measurement/Observation", params=params, headers=bearer(data.citizen)), status, code)


def test_repeated_single_parameters_and_sql_text_never_fail(server, data):
    with server.client() as c:
        r = c.get("/measurement/Observation", params=[("subject", "Patient/p-0"), ("subject", "Patient/p-0")],
                  headers=bearer(data.citizen))
        outcome(r, 400, "SEARCH_REPEATED_PARAMETER")
        for code in ("' OR 1=1--", "x|' OR 1=1--", "'; DROP TABLE resources;--", "%' OR code LIKE '%"):
            r = c.get("/measurement/Observation", params={"subject": "Patient/p-0", "code": code},
                      headers=bearer(data.citizen))
            assert r.status_code in (200, 400), r.text
            if r.status_code == 200:
                assert r.json()["total"] == 0 and "entry" not in r.json()
        assert _search(c, data.citizen, subject="Patient/p-0", **WINDOW)["total"] == 5  # the table is still there


# --------------------------------------------------------------------------- $search-measurements
def _operation(c, path, tokens, **params) -> dict:
    body = {"resourceType": "Parameters", "parameter": [_param(k, v) for k, v in params.items()]}
    r = c.post(path, json=body, headers=bearer(tokens))
    assert r.status_code == 200, r.text
    return r.json()


def _param(name: str, value) -> dict:
    if isinstance(value, dict):
        return {"name": name, **value}
    if isinstance(value, bool):
        return {"name": name, "valueBoolean": value}
    if isinstance(value, int):
        return {"name": name, "valueInteger": value}
    if "/" in value and not value[:4].isdigit():
        return {"name": name, "valueReference": {"reference": value}}
    return {"name": name, "valueDateTime": value}


def _submission_of(inner: dict) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for e in inner["entry"]:
        ids.setdefault(e["resource"]["resourceType"], []).append(e["resource"]["id"])
    return ids


def test_search_measurements_returns_one_bundle_per_submission(server, data):
    start = data.started.isoformat()
    with server.client() as c:
        outer = _operation(c, "/measurement/$search-measurements-bundle-limit", data.citizen, patient="Patient/p-0",
                           start=start, count=100)
        Bundle.model_validate(outer)
        assert outer["type"] == "collection"
        inner = [e["resource"] for e in outer["entry"]]
        assert all(b["resourceType"] == "Bundle" and b["type"] == "collection" for b in inner)
        assert all(e["fullUrl"].startswith("urn:uuid:") for e in outer["entry"])
        got = [_submission_of(b) for b in inner]
        # start: oldest first; each nested bundle holds the submission, its Provenance and the Questionnaire
        assert [{t: g[t] for t in ("Observation", "QuestionnaireResponse") if t in g} for g in got] == data.submissions
        assert all(len(g["Provenance"]) == 1 for g in got)
        assert got[0]["Questionnaire"] == ["q-copd"] and "Questionnaire" not in got[1]
        provenance = inner[0]["entry"][-1]["resource"]
        assert {t["reference"].rsplit("/", 1)[1] for t in provenance["target"]} == \
            set(data.submissions[0]["Observation"] + data.submissions[0]["QuestionnaireResponse"])

        # end: newest first, count bundles
        end = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        newest = _operation(c, "/measurement/$search-measurements-bundle-limit", data.citizen,
                            episodeOfCare="EpisodeOfCare/e-0", end=end, count=2)
        Bundle.model_validate(newest)
        assert [_submission_of(e["resource"])["Observation"] for e in newest["entry"]] == \
            [data.submissions[2]["Observation"], data.submissions[1]["Observation"]]
        # the same submission has the same nested fullUrl in every answer
        assert newest["entry"][0]["fullUrl"] == outer["entry"][2]["fullUrl"]

        # the plain operation with FUT's period: newest first
        plain = _operation(c, "/measurement/$search-measurements", data.citizen, patient="Patient/p-0",
                           period={"valuePeriod": {"start": start}})
        Bundle.model_validate(plain)
        assert [_submission_of(e["resource"])["Observation"] for e in plain["entry"]] == \
            [s["Observation"] for s in reversed(data.submissions)]
        plain = _operation(c, "/measurement/$search-measurements", data.citizen, patient="Patient/p-0", start=start)
        assert len(plain["entry"]) == 3

        # the care team's nurse sees them; nothing before the fixture's submissions is in an empty window
        assert len(_operation(c, "/measurement/$search-measurements-bundle-limit", data.nurse, patient="Patient/p-0",
                              start=start, count=100)["entry"]) == 3
        assert "entry" not in _operation(c, "/measurement/$search-measurements", data.citizen, patient="Patient/p-0",
                                         period={"valuePeriod": {"end": "2001-01-01"}})


SM = "MEASUREMENT_SEARCHMEASUREMENT_"


@pytest.mark.parametrize("path,params,status,code", [
    ("$search-measurements-bundle-limit", {"start": "2025-01-01", "count": 10}, 400,
     f"{SM}PATIENT_AND_EPISODE_NOT_SPECIFIED"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "count": 10}, 400,
     f"{SM}START_OR_END_NOT_SPECIFIED"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01", "end": "2026-01-01",
                                           "count": 10}, 400, f"{SM}START_AND_END_BOTH_SPECIFIED"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01"}, 400,
     f"{SM}COUNT_NOT_SPECIFIED"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01", "count": 0}, 400,
     f"{SM}COUNT_NOT_SPECIFIED"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01", "count": 101}, 400,
     f"{SM}COUNT_LIMIT_EXCEEDED"),
    ("$search-measurements-bundle-limit", {"patient": "EpisodeOfCare/e-0", "start": "2025-01-01", "count": 1}, 400,
     f"{SM}UNSUPPORTED_REFERENCE"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "yesterday", "count": 1}, 400,
     "REQUEST_INVALID_DATETIME"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "period": {"valuePeriod": {"start": "2025"}},
                                           "count": 1}, 400, "REQUEST_UNKNOWN_PARAMETER"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01", "count": 1,
                                           "based-on": "ServiceRequest/sr-0-spo2"}, 400, "REQUEST_UNSUPPORTED_PARAMETER"),
    ("$search-measurements-bundle-limit", {"patient": "Patient/p-0", "start": "2025-01-01", "count": "ten"}, 400,
     "REQUEST_INVALID_PARAMETER_TYPE"),
    ("$search-measurements", {"patient": "Patient/p-0"}, 400, f"{SM}PERIOD_NOT_SPECIFIED"),
    ("$search-measurements", {"patient": "Patient/p-0", "period": {"valuePeriod": {}}}, 400,
     f"{SM}PERIOD_NOT_SPECIFIED"),
    ("$search-measurements", {"patient": "Patient/p-0", "period": {"valuePeriod": {"start": "2025"}},
                              "start": "2025-01-01"}, 400, f"{SM}PERIOD_AND_START_OR_END_SPECIFIED"),
    ("$search-measurements", {"patient": "Patient/p-1", "start": "2025-01-01"}, 403,
     "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ("$search-measurements-bundle-limit", {"episodeOfCare": "EpisodeOfCare/e-1", "start": "2025-01-01",
                                           "count": 1}, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
])
def test_bad_search_measurements_are_refused(server, data, path, params, status, code):
    body = {"resourceType": "Parameters",
            "parameter": [{"name": k, "valueString": v} if k == "count" and isinstance(v, str) else _param(k, v)
                          for k, v in params.items()]}
    with server.client() as c:
        outcome(c.post(f"/measurement/{path}", json=body, headers=bearer(data.citizen)), status, code)


def test_search_measurements_body_must_be_parameters(server, data):
    with server.client() as c:
        h = bearer(data.citizen)
        outcome(c.post("/measurement/$search-measurements", json={"resourceType": "Bundle"}, headers=h), 400,
                "REQUEST_WRONG_RESOURCE_TYPE")
        outcome(c.post("/measurement/$search-measurements", json={"resourceType": "Parameters", "parameter": 7},
                       headers=h), 400, "REQUEST_INVALID_PARAMETERS")
        outcome(c.post("/measurement/$search-measurements", content=b"{", headers=h), 400, "REQUEST_MALFORMED_JSON")
        outcome(c.post("/measurement/$search-measurements-bundle-limit", json={"resourceType": "Parameters"},
                       headers=bearer(data.other_nurse)), 400, f"{SM}PATIENT_AND_EPISODE_NOT_SPECIFIED")
        r = c.post("/measurement/$search-measurements-bundle-limit", headers=bearer(data.other_nurse), json={
            "resourceType": "Parameters", "parameter": [_param("patient", "Patient/p-0"), _param("count", 5),
                                                        _param("start", "2025-01-01")]})
        outcome(r, 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")


# ------------------------------------------------------------------------ $get-patient-procedures
def _procedures(c, tokens, start: str, end: str, patient: str = "Patient/p-0", status: int = 200) -> dict:
    r = c.post("/careplan/$get-patient-procedures", headers=bearer(tokens), json={
        "resourceType": "Parameters", "parameter": [_param("patient", patient), _param("start", start),
                                                    _param("end", end)]})
    assert r.status_code == status, r.text
    return r.json()


def _rows(bundle: dict) -> list[dict]:
    """The Parameters' rows as {part name: value}."""
    Bundle.model_validate(bundle)
    assert bundle["type"] == "collection"
    (params,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Parameters"]
    Parameters.model_validate(params)
    rows = []
    for k, p in enumerate(params.get("parameter", []), 1):
        assert p["name"] == f"item_{k}"
        rows.append({part["name"]: next(v for key, v in part.items() if key.startswith("value")) for part in p["part"]})
    return rows


def test_get_patient_procedures_lists_the_weeks_slots_with_submissions(server, data):
    monday = WEEK
    with server.client() as c:
        bundle = _procedures(c, data.citizen, f"{monday}T00:00:00+01:00", f"{monday + dt.timedelta(days=6)}T23:59:59+01:00")
        rows = _rows(bundle)
        requests = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "ServiceRequest"}
        plans = [e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "CarePlan"]
        assert plans == ["cp-0"] and {"sr-0-spo2", "sr-0-pulse", "sr-0-questionnaire"} <= set(requests)
        expected = set()
        for sr_id, sr in requests.items():
            days = sr["occurrenceTiming"]["repeat"].get("dayOfWeek") or list(WEEKDAYS)
            expected |= {(sr_id, str(monday + dt.timedelta(days=k))) for k in range(7) if WEEKDAYS[k] in days}
        got = {(r["ServiceRequest"]["reference"].rsplit("/", 1)[1], r["ResolvedTimingStart"][:10]) for r in rows}
        assert got == expected and len(rows) == len(expected)
        for r in rows:
            assert r["CarePlan"]["reference"] == f"{server.base_url}/careplan/CarePlan/cp-0"
            assert r["TimingType"]["coding"][0]["code"] == "Resolved" and r["OccurrencesRequested"] == 1
            assert r["ServiceRequestVersionId"] == "1" and r["Activity"]
            assert r["ResolvedTimingStart"].endswith("T00:00:00+01:00")
            assert r["ResolvedTimingEnd"] == r["ResolvedTimingStart"][:10] + "T23:59:59+01:00"
        starts = [r["ResolvedTimingStart"] for r in rows]
        assert starts == sorted(starts)
        submitted = {(r["ServiceRequest"]["reference"].rsplit("/", 1)[1], r["ResolvedTimingStart"][:10]):
                     r.get("TotalSubmitted", 0) for r in rows}
        a, b = str(data.day_a), str(data.day_b)
        assert submitted[("sr-0-spo2", a)] == 2  # two submissions on day A
        assert submitted[("sr-0-pulse", a)] == 1
        assert submitted[("sr-0-questionnaire", a)] == 1
        if ("sr-0-spo2", b) in submitted:
            assert submitted[("sr-0-spo2", b)] == 1 and submitted[("sr-0-pulse", b)] == 1
        others = {k: v for k, v in submitted.items() if k[1] not in (a, b)}
        assert not any(others.values())

        # One day only, given as dates: that day's rows.
        day = _rows(_procedures(c, data.citizen, a, a))
        assert {r["ResolvedTimingStart"][:10] for r in day} == {a}


def test_get_patient_procedures_for_practitioners(server, data):
    with server.client() as c:
        if "$get-patient-procedures" in auth.ROLE_PERMISSIONS["monitoringAssistor"]:
            rows = _rows(_procedures(c, data.nurse, str(WEEK), str(WEEK + dt.timedelta(days=6))))
            assert rows
            outcome(c.post("/careplan/$get-patient-procedures", headers=bearer(data.other_nurse), json={
                "resourceType": "Parameters", "parameter": [_param("patient", "Patient/p-0"),
                                                            _param("start", str(WEEK)), _param("end", str(WEEK))]}),
                    403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT")
        else:  # the nurse role does not carry the permission (twin.server.auth.ROLE_PERMISSIONS)
            body = _procedures(c, data.nurse, str(WEEK), str(WEEK), status=403)
            assert body["issue"][0]["details"]["coding"][0]["code"] == "SECURITY_TOKEN_INSUFFICIENT_PERMISSION"


@pytest.mark.parametrize("parameters,status,code", [
    ([("patient", "Patient/p-0"), ("start", "2025-03-01"), ("end", "2025-04-15")], 400,
     "CAREPLAN_GETPATIENTPROCEDURES_PERIOD_TOO_LONG"),
    ([("patient", "Patient/p-0"), ("start", "2025-03-09"), ("end", "2025-03-03")], 400,
     "CAREPLAN_GETPATIENTPROCEDURES_END_BEFORE_START"),
    ([("patient", "Patient/p-0"), ("start", "2025-03-03")], 400, "CAREPLAN_GETPATIENTPROCEDURES_START_AND_END_REQUIRED"),
    ([("start", "2025-03-03"), ("end", "2025-03-09")], 400, "CAREPLAN_GETPATIENTPROCEDURES_PATIENT_NOT_SPECIFIED"),
    ([("patient", "Patient/p-0"), ("start", "2025-02-30"), ("end", "2025-03-09")], 400, "REQUEST_INVALID_DATETIME"),
    ([("patient", "Patient/p-0"), ("start", "2025-03-03"), ("end", "2025-03-09"), ("colour", "red")], 400,
     "REQUEST_UNKNOWN_PARAMETER"),
    ([("patient", "Patient/p-0"), ("patient", "Patient/p-0"), ("start", "2025-03-03"), ("end", "2025-03-09")], 400,
     "REQUEST_REPEATED_PARAMETER"),
    ([("patient", "CarePlan/cp-0"), ("start", "2025-03-03"), ("end", "2025-03-09")], 400, "REQUEST_INVALID_REFERENCE"),
    ([("patient", "Patient/p-1"), ("start", "2025-03-03"), ("end", "2025-03-09")], 403,
     "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
    ([("patient", "Patient/p-0"), ("episodeOfCare", "EpisodeOfCare/e-1"), ("start", "2025-03-03"),
      ("end", "2025-03-09")], 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT"),
])
def test_bad_procedure_requests_are_refused(server, data, parameters, status, code):
    body = {"resourceType": "Parameters", "parameter": [_param(k, v) for k, v in parameters]}
    with server.client() as c:
        outcome(c.post("/careplan/$get-patient-procedures", json=body, headers=bearer(data.citizen)), status, code)


def test_reads_need_a_token(server):
    with server.client() as c:
        outcome(c.get("/measurement/Observation", params={"subject": "Patient/p-0"}), 401, "SECURITY_TOKEN_MISSING")
        outcome(c.post("/careplan/$get-patient-procedures", json={"resourceType": "Parameters"}), 401,
                "SECURITY_TOKEN_MISSING")
        outcome(c.get("/measurement/$search-measurements"), 405, "REQUEST_METHOD_NOT_ALLOWED")
