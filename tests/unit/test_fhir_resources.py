"""The FHIR builders of the API: valid R4 (checked with fhir.resources' R4B models), FUT-shaped, and
their inverses (thresholds, questionnaire rules, triage finding) give back what went in."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class

from twin.rules import MEASUREMENTS, QuestionRule, ReferenceRanges, triage_session
from twin.server import fhir as fr

BASE = "http://127.0.0.1:8080"
T0 = "2025-03-03T09:15:00"
COPD_RULES = (QuestionRule(("dyspnoea",), "yellow"), QuestionRule(("dyspnoea", "cough"), "red"),
              QuestionRule(("sputum",), "red"))
HF_RULES = (QuestionRule(("dyspnoea",), "yellow"), QuestionRule(("oedema",), "yellow"),
            QuestionRule(("dyspnoea", "oedema"), "red"))
SRS = {"spo2": "sr-spo2", "pulse": "sr-pulse", "weight": "sr-weight", "sbp": "sr-sbp", "questionnaire": "sr-q"}


@pytest.fixture(scope="module")
def ref():
    return fr.Refs(BASE)


def valid(resource: dict) -> dict:
    """Validate with the R4B model of the resource's type (nested resources included) and return it."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def profile_of(resource: dict) -> str:
    return resource["meta"]["profile"][0]


def ext(resource: dict, url: str) -> list[dict]:
    return [e for e in resource.get("extension", []) if e["url"] == url]


def submit(ref, session_id="s-1", values=None, answers=None):
    values = {"spo2": 93.6, "pulse": 88.4, "weight": 81.26} if values is None else values
    answers = {"dyspnoea": True, "cough": False} if answers is None else answers
    return fr.submission(ref, session_id, "p1", "e1", SRS, "q1", values, answers, T0)


def entries(parameters: dict) -> list[dict]:
    (param,) = parameters["parameter"]
    assert param["name"] == "measurement"
    return param["resource"].get("entry", [])


# -- Refs ------------------------------------------------------------------------------------------


def test_refs_url_puts_each_type_on_its_service(ref):
    assert ref.url("Patient", "7") == f"{BASE}/patient/Patient/7"
    assert ref.url("Observation", "a-1") == f"{BASE}/measurement/Observation/a-1"
    assert ref.url("Task", 3) == f"{BASE}/task/Task/3"
    assert ref.url("CareTeam", "9") == f"{BASE}/organization/CareTeam/9"
    assert ref.url("ServiceRequest", "9") == f"{BASE}/careplan/ServiceRequest/9"
    assert ref.url("Questionnaire", "9") == f"{BASE}/questionnaire/Questionnaire/9"
    assert fr.Refs(BASE + "/").url("Patient", "1") == ref.url("Patient", "1")
    with pytest.raises(ValueError):
        ref.url("Patient", "has space")
    with pytest.raises(ValueError):
        ref.url("Basic", "1")


@pytest.mark.parametrize("type_", ["Patient", "Observation", "Task", "CareTeam", "ServiceRequest", "Communication"])
def test_a_stored_resource_gets_the_same_url_unchecked(ref, type_):
    assert ref.stored_url(type_, "lmnopqrstuv-abcdefgh") == ref.url(type_, "lmnopqrstuv-abcdefgh")


@pytest.mark.parametrize("text, expected", [
    (f"{BASE}/patient/Patient/7", ("Patient", "7")),
    (f"{BASE}/measurement/Observation/921/_history/1", ("Observation", "921")),
    ("EpisodeOfCare/e-1", ("EpisodeOfCare", "e-1")),
    ("ClinicalImpression/5/_history/2", ("ClinicalImpression", "5")),
])
def test_refs_parse_accepts_absolute_and_relative(ref, text, expected):
    assert ref.parse(text) == expected


@pytest.mark.parametrize("junk", [
    "", "Patient", "Patient/", "/Patient/1", "Patient/1/extra", "Basic/1", "Patient/a b",
    f"{BASE}/measurement/Patient/1",  # Patient is served by patient, not measurement
    "https://patient.example.org/fhir/Patient/1",  # another server
    f"{BASE}/patient/Patient/1?x=1", "urn:uuid:0559b24d-cc6e-5c04-abed-49d01e6b05a9", None,
])
def test_refs_parse_rejects_junk(ref, junk):
    with pytest.raises(ValueError):
        ref.parse(junk)


def test_refs_round_trip_every_type(ref):
    for type_ in fr.SERVICE:
        assert ref.parse(ref.url(type_, "x1")) == (type_, "x1")


# -- organisation ----------------------------------------------------------------------------------


def test_organization_municipality_and_region(ref):
    kommune = valid(fr.organization(ref, "o1", "Aalborg Kommune", 851, "municipality"))
    assert kommune["identifier"] == [{"use": "official", "system": "urn:oid:1.2.208.176.1.1", "value": "851"}]
    assert kommune["type"][0]["coding"][0]["code"] == "kommune"
    assert ext(kommune, fr.EXT_ORG_MUNICIPALITY_CODE)[0]["valueString"] == "0851"
    assert profile_of(kommune).endswith("/ehealth-organization")
    region = valid(fr.organization(ref, "o2", "Region Nordjylland", 1081, "region"))
    assert region["type"][0]["coding"][0]["code"] == "region"
    assert ext(region, fr.EXT_ORG_REGION_CODE)[0]["valueString"] == "1081"
    with pytest.raises(ValueError):
        fr.organization(ref, "o3", "X", 1, "county")


def test_care_team_and_practitioners(ref):
    team = valid(fr.care_team(ref, "t1", "Aalborg copd team", "o1",
                              [("n1", "monitoringAssistor"), ("n2", "clinicalViewer"), ("a1", "auditor")]))
    assert team["identifier"][0]["system"] == "urn:ietf:rfc:3986"
    assert team["identifier"][0]["value"].startswith("urn:uuid:")
    assert team == fr.care_team(ref, "t1", "Aalborg copd team", "o1",
                                [("n1", "monitoringAssistor"), ("n2", "clinicalViewer"), ("a1", "auditor")])
    assert [p["member"]["reference"] for p in team["participant"]] == [
        ref.url("Practitioner", "n1"), ref.url("Practitioner", "n2"), ref.url("Practitioner", "a1")]
    assert team["participant"][0]["role"][0]["coding"][0] == {"system": fr.CARETEAM_ROLE_SYSTEM,
                                                              "code": "monitoringAssistor"}
    assert team["managingOrganization"] == [ref.ref("Organization", "o1")]
    with pytest.raises(ValueError):
        fr.care_team(ref, "t1", "X", "o1", [("n1", "boss")])
    nurse = valid(fr.practitioner(ref, "n1", "Anne Marie Nielsen", "anne.nielsen"))
    assert nurse["name"][0]["family"] == "Nielsen" and nurse["name"][0]["given"] == ["Anne", "Marie"]
    role = valid(fr.practitioner_role(ref, "r1", "n1", "o1", "t1", "monitoringAssistor"))
    assert role["practitioner"] == ref.ref("Practitioner", "n1")
    assert ext(role, fr.EXT_CARETEAM)[0]["valueReference"] == ref.ref("CareTeam", "t1")


# -- patient, episode, plan ------------------------------------------------------------------------


def test_patient_episode_and_care_plan(ref):
    pat = valid(fr.patient(ref, "p1", "0101501234", "Jens Hansen", False, "1950-01-01"))
    assert pat["identifier"][0]["system"] == "urn:oid:1.2.208.176.1.2"
    assert pat["gender"] == "male"
    with pytest.raises(ValueError):
        fr.patient(ref, "p1", "010150-1234", "Jens Hansen", False, "1950-01-01")
    eoc = valid(fr.episode_of_care(ref, "e1", "p1", "o1", "t1", "active", "2025-01-01T08:00:00",
                                   condition_id="c1"))
    assert eoc["managingOrganization"] == ref.ref("Organization", "o1")
    assert eoc["team"] == [ref.ref("CareTeam", "t1")]
    assert ext(eoc, fr.EXT_CAREMANAGER_ORGANIZATION)[0]["valueReference"] == ref.ref("Organization", "o1")
    assert eoc["period"]["start"] == "2025-01-01T08:00:00+01:00"  # naive = Danish standard time
    assert eoc["diagnosis"][0]["condition"]["reference"] == f"{BASE}/careplan/Condition/c1"
    plan = valid(fr.care_plan(ref, "cp1", "p1", "e1", "t1", ["sr-spo2", "sr-q"], start="2025-01-01"))
    assert [a["reference"] for a in plan["activity"]] == [ref.ref("ServiceRequest", "sr-spo2"),
                                                          ref.ref("ServiceRequest", "sr-q")]
    assert ext(plan, fr.EXT_EPISODE_OF_CARE)[0]["valueReference"] == ref.ref("EpisodeOfCare", "e1")


def service_request(ref, measurement="spo2", ranges=None, weekdays=("mon", "thu"), per_week=2):
    return fr.service_request(ref, "sr1", "p1", "e1", "cp1", measurement, ranges, weekdays, per_week,
                              start="2025-01-01T00:00:00")


@pytest.mark.parametrize("measurement, ranges", [
    ("spo2", ReferenceRanges(88, 92, math.inf, math.inf)),
    ("pulse", ReferenceRanges(40, 50, 110, 130)),
    ("weight", ReferenceRanges(-math.inf, 71.5, 84.25, math.inf)),
    ("sbp", ReferenceRanges(-math.inf, -math.inf, 160, 180)),
    ("dbp", ReferenceRanges(-math.inf, -math.inf, math.inf, math.inf)),
    ("spo2", ReferenceRanges(90, 90, 100, 100)),
])
def test_reference_ranges_round_trip(ref, measurement, ranges):
    sr = valid(service_request(ref, measurement, ranges))
    assert fr.ranges_from_service_request(sr) == ranges
    for e in ext(sr, fr.EXT_REFERENCE_RANGE):
        parts = {p["url"]: p for p in e["extension"]}
        assert parts["type"]["valueCodeableConcept"]["coding"][0]["system"] == fr.REFERENCE_RANGE_TYPE_SYSTEM
        assert "low" in parts or "high" in parts  # the IG: at least one bound
        for bound in ("low", "high"):
            if bound in parts:
                q = parts[bound]["valueQuantity"]
                assert q["system"] == fr.UCUM and q["code"] == MEASUREMENTS[measurement].unit_ucum


def test_service_request_carries_red_and_yellow_ranges(ref):
    sr = service_request(ref, "pulse", ReferenceRanges(40, 50, 110, 130))
    by_type = {e["extension"][-1]["valueCodeableConcept"]["coding"][0]["code"]: e
               for e in ext(sr, fr.EXT_REFERENCE_RANGE)}
    assert set(by_type) == {"RELRAL", "RELGAL"}
    red = {p["url"]: p.get("valueQuantity", {}).get("value") for p in by_type["RELRAL"]["extension"]}
    assert red["low"] == 40 and red["high"] == 130
    assert sr["code"]["coding"][0] == {"system": "urn:oid:1.2.208.176.2.1", "code": "NPU21692",
                                       "display": MEASUREMENTS["pulse"].display}
    assert sr["requisition"]["value"] == ref.url("CarePlan", "cp1")
    assert "basedOn" not in sr  # the IG's ehealth-servicerequest has basedOn 0..0
    assert fr.service_request_measurement(sr) == "pulse"


def test_service_request_timing_and_questionnaire(ref):
    weekly = service_request(ref, weekdays="thu+mon")
    assert weekly["occurrenceTiming"]["repeat"]["dayOfWeek"] == ["mon", "thu"]
    daily = valid(service_request(ref, weekdays=[], per_week=7))
    assert daily["occurrenceTiming"]["repeat"] == {"boundsPeriod": {"start": "2025-01-01T00:00:00+01:00"},
                                                   "frequency": 1, "period": 1, "periodUnit": "d"}
    twice = service_request(ref, weekdays=[], per_week=2)["occurrenceTiming"]["repeat"]
    assert (twice["frequency"], twice["periodUnit"]) == (2, "wk")
    q = valid(service_request(ref, "questionnaire"))
    assert q["code"]["coding"][0]["code"] == "445988008"
    assert fr.service_request_measurement(q) == "questionnaire"
    assert fr.ranges_from_service_request(q) == ReferenceRanges(-math.inf, -math.inf, math.inf, math.inf)
    with pytest.raises(ValueError):
        service_request(ref, "questionnaire", ReferenceRanges(1, 2, 3, 4))
    with pytest.raises(ValueError):
        service_request(ref, "fev1")
    with pytest.raises(ValueError):
        service_request(ref, weekdays=["someday"])


def test_ranges_read_absolute_medcom_types_too(ref):
    sr = copy.deepcopy(service_request(ref, "pulse", ReferenceRanges(40, 50, 110, 130)))
    for e in ext(sr, fr.EXT_REFERENCE_RANGE):
        coding = e["extension"][-1]["valueCodeableConcept"]["coding"][0]
        coding.update(system=fr.ABSOLUTE_RANGE_TYPE_SYSTEM, code={"RELRAL": "RAL", "RELGAL": "GAL"}[coding["code"]])
    assert fr.ranges_from_service_request(sr) == ReferenceRanges(40, 50, 110, 130)
    coding["code"] = "XYZ"
    with pytest.raises(ValueError):
        fr.ranges_from_service_request(sr)


# -- questionnaire ---------------------------------------------------------------------------------


@pytest.mark.parametrize("questions, rules", [
    (("dyspnoea", "cough", "sputum"), COPD_RULES),
    (("dyspnoea", "oedema"), HF_RULES),
    (("dyspnoea", "cough", "sputum", "oedema"), ()),
])
def test_questionnaire_rules_round_trip(ref, questions, rules):
    q = valid(fr.questionnaire(ref, "q1", questions, rules, owner_organization_id="o1"))
    assert [i["linkId"] for i in q["item"]] == list(questions)
    assert all(i["type"] == "boolean" for i in q["item"])
    assert fr.question_rules_from_questionnaire(q) == list(rules)


def test_questionnaire_answer_significance_is_fut_shaped(ref):
    q = fr.questionnaire(ref, "q1", ("dyspnoea", "cough", "sputum"), COPD_RULES)
    dyspnoea = q["item"][0]
    significances = [e for e in dyspnoea["extension"] if e["url"] == fr.EXT_ANSWER_SIGNIFICANCE]
    assert len(significances) == 2  # dyspnoea → yellow, dyspnoea + cough → red
    parts = {p["url"]: p for p in significances[0]["extension"]}
    assert parts["significance"]["valueCoding"] == {"system": fr.SIGNIFICANCE_SYSTEM, "code": "yellow"}
    condition = {c["url"]: c for c in parts[fr.EXT_ANSWER_CONDITION]["extension"]}
    assert condition["operator"]["valueCode"] == "=" and condition["value"]["valueBoolean"] is True
    # Without the twin's sub-extension (a plain FUT questionnaire) each significance is a one-question rule.
    plain = copy.deepcopy(q)
    for item in plain["item"]:
        for e in item.get("extension", []):
            e["extension"] = [p for p in e["extension"] if p["url"] != fr.EXT_TWIN_QUESTION_RULE]
    assert fr.question_rules_from_questionnaire(plain) == [
        QuestionRule(("dyspnoea",), "yellow"), QuestionRule(("dyspnoea",), "red"), QuestionRule(("sputum",), "red")]
    with pytest.raises(ValueError):
        fr.questionnaire(ref, "q1", ("dyspnoea",), COPD_RULES)  # rules ask questions not in it


# -- submission ------------------------------------------------------------------------------------


def test_submission_is_a_valid_fut_transaction(ref):
    body = valid(submit(ref))
    rows = entries(body)
    assert body["parameter"][0]["resource"]["type"] == "transaction"
    assert [e["request"] for e in rows] == [{"method": "POST", "url": "Observation"}] * 3 + [
        {"method": "POST", "url": "QuestionnaireResponse"}]
    for e in rows:
        r = e["resource"]
        assert "id" not in r
        assert e["fullUrl"].startswith("urn:uuid:")
        assert fr.resource_identifier(r) == e["fullUrl"]  # the idempotency key
        assert r["subject"] == ref.ref("Patient", "p1")
        assert ext(r, fr.EXT_EPISODE_OF_CARE)[0]["valueReference"] == ref.ref("EpisodeOfCare", "e1")
        timing = {p["url"]: p for p in ext(r, fr.EXT_RESOLVED_TIMING)[0]["extension"]}
        assert timing["type"]["valueCodeableConcept"]["coding"][0]["code"] == "Adhoc"
        assert "start" not in timing
    spo2 = rows[0]["resource"]
    assert spo2["status"] == "final" and spo2["performer"] == [ref.ref("Patient", "p1")]
    assert spo2["basedOn"] == [ref.ref("ServiceRequest", "sr-spo2")]
    assert spo2["effectiveDateTime"] == "2025-03-03T09:15:00+01:00"
    qr = rows[-1]["resource"]
    assert qr["status"] == "completed" and qr["questionnaire"] == ref.url("Questionnaire", "q1")
    assert qr["item"] == [{"linkId": "dyspnoea", "answer": [{"valueBoolean": True}]},
                          {"linkId": "cough", "answer": [{"valueBoolean": False}]}]


def test_submission_ids_are_deterministic_per_session(ref):
    first, again, other = (submit(ref, "s-1"), submit(ref, "s-1"), submit(ref, "s-2"))
    assert first == again
    urls = [e["fullUrl"] for e in entries(first)]
    assert len(set(urls)) == len(urls)
    assert not set(urls) & {e["fullUrl"] for e in entries(other)}
    assert urls[0] == fr.submission_key("s-1", "spo2")
    assert fr.submission_key(17, "spo2") == fr.submission_key("17", "spo2")


def test_submission_values_as_the_device_reports_them(ref):
    rows = entries(submit(ref, values={"spo2": 93.6, "pulse": 88.4, "weight": 81.26, "sbp": 131.5},
                          answers={}))
    values = {e["resource"]["code"]["coding"][0]["code"]: e["resource"]["valueQuantity"] for e in rows}
    assert values["NPU03011"]["value"] == 94 and isinstance(values["NPU03011"]["value"], int)
    assert values["NPU21692"]["value"] == 88
    assert values["NPU03804"]["value"] == 81.3
    assert values["DNK05472"]["value"] == round(131.5)  # as twin.rules' canonical value
    assert values["NPU03804"]["unit"] == "kg" and values["NPU03804"]["system"] == fr.UCUM


def test_submission_skips_missing_readings(ref):
    rows = entries(fr.submission(ref, "s-3", "p1", "e1", SRS, "q1",
                                 {"spo2": None, "pulse": float("nan"), "weight": 80.0}, {}, T0))
    assert [e["resource"]["code"]["coding"][0]["code"] for e in rows] == ["NPU03804"]
    empty = valid(fr.submission(ref, "s-4", "p1", "e1", SRS, None, {"spo2": None}, {}, T0))
    assert entries(empty) == []
    with pytest.raises(ValueError):
        fr.submission(ref, "s-5", "p1", "e1", {"spo2": "sr"}, "q1", {"weight": 80.0}, {}, T0)
    with pytest.raises(ValueError):
        fr.submission(ref, "s-5", "p1", "e1", {"spo2": "sr"}, None, {}, {"dyspnoea": True}, T0)


def test_submitted_values_triage_like_the_twin(ref):
    ranges = {"spo2": ReferenceRanges(88, 92, math.inf, math.inf), "pulse": ReferenceRanges(40, 50, 110, 130)}
    srs = {m: fr.service_request(ref, f"sr-{m}", "p1", "e1", "cp1", m, r, "mon", 1) for m, r in ranges.items()}
    raw = {"spo2": 91.6, "pulse": 110.4}
    rows = entries(fr.submission(ref, "s-6", "p1", "e1", {m: f"sr-{m}" for m in raw}, None, raw, {}, T0))
    read = {fr.service_request_measurement(e["resource"]): e["resource"]["valueQuantity"]["value"] for e in rows}
    via_api = triage_session(read, {m: fr.ranges_from_service_request(sr) for m, sr in srs.items()}, {}, [])
    canonical = {m: round(v, MEASUREMENTS[m].decimals) for m, v in raw.items()}
    assert via_api == triage_session(canonical, ranges, {}, []) and via_api.colour == "green"


def test_observation_resolved_timing_rules(ref):
    obs = valid(fr.observation(ref, "o9", "p1", "e1", "sr-spo2", "spo2", 95, T0, "p1",
                               resolved_timing_type="Resolved", timing_start="2025-03-03T08:00:00",
                               timing_end="2025-03-03T10:00:00"))
    assert obs["id"] == "o9"
    with pytest.raises(ValueError):
        fr.observation(ref, None, "p1", "e1", "sr", "spo2", 95, T0, "p1", resolved_timing_type="Resolved")
    with pytest.raises(ValueError):
        fr.observation(ref, None, "p1", "e1", "sr", "spo2", 95, T0, "p1", resolved_timing_type="Later")
    with pytest.raises(ValueError):
        fr.observation(ref, None, "p1", "e1", "sr", "spo2", float("nan"), T0, "p1")


def test_provenance(ref):
    targets = [ref.url("Observation", "1"), ref.url("QuestionnaireResponse", "2")]
    prov = valid(fr.provenance(ref, "pv1", targets, "p1", "2025-03-03T09:15:01+00:00"))
    assert [t["reference"] for t in prov["target"]] == targets
    assert prov["policy"] == ["http://ehealth.sundhed.dk/policy/ehealth/coherent-submitted-measurement"]
    assert prov["agent"] == [{"who": ref.ref("Patient", "p1")}]
    assert prov["recorded"] == "2025-03-03T09:15:01+00:00"


# -- triage and follow-up --------------------------------------------------------------------------


def test_clinical_impressions(ref):
    items = [ref.url("Observation", "1"), ref.url("QuestionnaireResponse", "2")]
    triage = valid(fr.clinical_impression_triage(ref, "ci1", "p1", "e1", items, "red",
                                                 ["spo2:red", "dyspnoea+cough:red"], T0, care_plan_id="cp1"))
    assert triage["code"]["coding"][0]["code"] == "TriagingResult"
    assert triage["finding"][0]["itemCodeableConcept"]["coding"][0]["system"] == fr.CI_FINDING_SYSTEM
    assert [i["reference"] for i in triage["investigation"][0]["item"]] == items
    finding = fr.finding_from_clinical_impression(triage)
    assert (finding.colour, finding.reasons) == ("red", ("spo2:red", "dyspnoea+cough:red"))
    green = valid(fr.clinical_impression_triage(ref, "ci2", "p1", "e1", items, "green", [], T0))
    assert fr.finding_from_clinical_impression(green).reasons == ()
    with pytest.raises(ValueError):
        fr.clinical_impression_triage(ref, "ci3", "p1", "e1", items, "orange", [], T0)
    assessment = valid(fr.clinical_impression_assessment(ref, "ci4", "p1", "e1", "ci1", "n1", T0, note="Ringet op"))
    assert assessment["code"]["coding"][0]["code"] == "MeasurementAssessment"
    assert assessment["previous"] == ref.ref("ClinicalImpression", "ci1")
    decision = ext(assessment, fr.EXT_CI_DECISION)[0]["valueCodeableConcept"]["coding"][0]
    assert decision == {"system": fr.CI_DECISION_SYSTEM, "code": "approved"}


def test_tasks(ref):
    task = valid(fr.task_for_assessment(ref, "tk1", "p1", "e1", "t1", ref.url("ClinicalImpression", "ci1"),
                                        "urgent", T0))
    assert (task["status"], task["intent"], task["priority"]) == ("ready", "plan", "urgent")
    assert profile_of(task).endswith("/ehealth-task")
    category = ext(task, fr.EXT_TASK_CATEGORY)[0]["valueCodeableConcept"]["coding"][0]
    assert (category["system"], category["code"]) == (fr.TASK_CATEGORY_SYSTEM, "MeasurementForAssessment")
    assert ext(task, fr.EXT_TASK_RESPONSIBLE)[0]["valueReference"] == ref.ref("CareTeam", "t1")
    assert ext(task, fr.EXT_TASK_EPISODE_OF_CARE)[0]["valueReference"] == ref.ref("EpisodeOfCare", "e1")
    restriction = ext(task, fr.EXT_RESTRICTION_CATEGORY)[0]["valueCodeableConcept"]["coding"][0]
    assert restriction["code"] == "measurement-monitoring"
    assert task["for"] == ref.ref("Patient", "p1") and task["focus"] == ref.ref("ClinicalImpression", "ci1")
    with pytest.raises(ValueError):
        fr.task_for_assessment(ref, "tk1", "p1", "e1", "t1", ref.url("ClinicalImpression", "ci1"), "high", T0)
    with pytest.raises(ValueError):
        fr.task_for_assessment(ref, "tk1", "p1", "e1", "t1", "somewhere", "routine", T0)
    missing = valid(fr.task_missing_measurement(ref, "tk2", "p1", "e1", "t1", "sr-spo2", T0,
                                                timing_start="2025-03-03T00:00:00", timing_end="2025-03-03T08:00:00"))
    assert ext(missing, fr.EXT_TASK_CATEGORY)[0]["valueCodeableConcept"]["coding"][0]["code"] == \
        "MissingMeasurementResolving"
    assert missing["focus"] == ref.ref("ServiceRequest", "sr-spo2") and missing["priority"] == "routine"
    timing = {p["url"]: p for p in ext(missing, fr.EXT_RESOLVED_TIMING)[0]["extension"]}
    assert timing["type"]["valueCodeableConcept"]["coding"][0]["code"] == "Resolved"


def test_communication(ref):
    to_team = valid(fr.communication(ref, "m1", "p1", "e1", ref.url("Patient", "p1"), ref.url("CareTeam", "t1"),
                                     "Jeg har det dårligere", T0, title="Spørgsmål"))
    assert to_team["status"] == "in-progress"
    assert to_team["category"][0]["coding"][0] == {"system": fr.MESSAGE_CATEGORY_SYSTEM, "code": "message"}
    assert ext(to_team, fr.EXT_RECIPIENT_CARETEAM)[0]["valueReference"] == ref.ref("CareTeam", "t1")
    assert "recipient" not in to_team and to_team["sender"] == ref.ref("Patient", "p1")
    assert ext(to_team, fr.EXT_ADMINISTRATIVE_STATUS)[0]["valueCoding"]["code"] == "activate"
    assert to_team["payload"] == [{"contentString": "Jeg har det dårligere"}]
    to_patient = valid(fr.communication(ref, "m2", "p1", "e1", ref.url("CareTeam", "t1"), ref.url("Patient", "p1"),
                                        "Vi ringer i eftermiddag", T0))
    assert to_patient["recipient"] == [ref.ref("Patient", "p1")]
    assert ext(to_patient, fr.EXT_SENDER_CARETEAM)[0]["valueReference"] == ref.ref("CareTeam", "t1")
    with pytest.raises(ValueError):
        fr.communication(ref, "m3", "p1", "e1", ref.url("Task", "1"), ref.url("Patient", "p1"), "x", T0)


# -- protocol resources ----------------------------------------------------------------------------


def test_operation_outcome():
    oo = valid(fr.operation_outcome("error", "processing", "MEASUREMENT_SUBMITMEASUREMENT_INPUT_FOR_DIFFERENT_PATIENTS",
                                    "The resources provided are for different patients."))
    (issue,) = oo["issue"]
    assert issue["details"]["coding"][0]["code"] == "MEASUREMENT_SUBMITMEASUREMENT_INPUT_FOR_DIFFERENT_PATIENTS"
    assert issue["diagnostics"] == "The resources provided are for different patients."


def test_bundles(ref):
    task = fr.task_for_assessment(ref, "tk1", "p1", "e1", "t1", ref.url("ClinicalImpression", "ci1"), "asap", T0)
    ci = fr.clinical_impression_triage(ref, "ci1", "p1", "e1", [ref.url("Observation", "1")], "red", [], T0)
    page = valid(fr.bundle_searchset(
        [{"fullUrl": ref.url("Task", "tk1"), "resource": task},
         {"fullUrl": ref.url("ClinicalImpression", "ci1"), "resource": ci, "mode": "include"}],
        1, f"{BASE}/task/Task?responsible=t1", f"{BASE}/task/Task?responsible=t1&_offset=1"))
    assert page["type"] == "searchset" and page["total"] == 1
    assert [e["search"]["mode"] for e in page["entry"]] == ["match", "include"]
    assert [link["relation"] for link in page["link"]] == ["self", "next"]
    no_total = valid(fr.bundle_searchset([], None, f"{BASE}/careplan/EpisodeOfCare?team=t1"))
    assert "total" not in no_total and "entry" not in no_total
    answer = valid(fr.bundle_transaction_response([
        (ref.url("Observation", "921") + "/_history/1", "2025-02-06T14:40:51.131+00:00", 201),
        (ref.url("QuestionnaireResponse", "922") + "/_history/1", "2025-02-06T14:40:51.131+00:00", "200 OK")]))
    assert answer["type"] == "transaction-response"
    first = answer["entry"][0]["response"]
    assert (first["status"], first["etag"]) == ("201 Created", "1")
    assert answer["entry"][1]["response"]["status"] == "200 OK"


def test_capability_statement():
    cs = valid(fr.capability_statement(f"{BASE}/measurement",
                                       {"Observation": ["read", "vread", "search", "patch"],
                                        "ClinicalImpression": ["create", "read"]},
                                       ["$submit-measurement", "$search-measurements",
                                        "ClinicalImpression/$set-measurement-validity"]))
    (rest,) = cs["rest"]
    obs = rest["resource"][0]
    assert obs["profile"] == fr.PROFILE["Observation"]
    assert [i["code"] for i in obs["interaction"]] == ["read", "vread", "search-type", "patch"]
    assert [o["name"] for o in rest["operation"]] == ["submit-measurement", "search-measurements"]
    assert rest["resource"][1]["operation"][0]["name"] == "set-measurement-validity"
    with pytest.raises(ValueError):
        fr.capability_statement(BASE, {"Observation": ["explode"]}, [])


def test_every_builder_sets_its_fut_profile(ref):
    built = [fr.organization(ref, "o1", "A", 101, "municipality"), fr.care_team(ref, "t1", "T", "o1", []),
             fr.practitioner(ref, "n1", "N N", "n"), fr.practitioner_role(ref, "r1", "n1", "o1", "t1", "clinicalViewer"),
             fr.patient(ref, "p1", "0101501234", "P P", True, "1950-01-01"),
             fr.episode_of_care(ref, "e1", "p1", "o1", "t1", "active", T0),
             fr.care_plan(ref, "cp1", "p1", "e1", "t1", []), service_request(ref),
             fr.questionnaire(ref, "q1", ("cough",), ()), *[e["resource"] for e in entries(submit(ref))],
             fr.provenance(ref, "pv", [ref.url("Observation", "1")], "p1", T0),
             fr.communication(ref, "m1", "p1", None, ref.url("Practitioner", "n1"), ref.url("Patient", "p1"), "x", T0)]
    for resource in built:
        valid(resource)
        assert profile_of(resource) == fr.PROFILE[resource["resourceType"]]
        assert profile_of(resource).startswith("http://ehealth.sundhed.dk/fhir/StructureDefinition/ehealth-")


def test_fhir_datetime():
    assert fr.fhir_datetime("2025-03-03T09:15:00") == "2025-03-03T09:15:00+01:00"
    assert fr.fhir_datetime("2025-03-03T09:15:00Z") == "2025-03-03T09:15:00+00:00"
    assert fr.fhir_datetime("2025-03-03 09:15:00.250") == "2025-03-03T09:15:00.250000+01:00"
    assert fr.fhir_datetime("2025-03-03") == "2025-03-03"
    with pytest.raises(ValueError):
        fr.fhir_datetime("yesterday")


def test_numpy_inputs_from_the_seed_give_json_ready_dicts(ref):
    """citizens.parquet / sessions.parquet hand over numpy scalars; the output must still be plain JSON."""
    ranges = ReferenceRanges(*(np.float64(x) for x in (88, 92, np.inf, np.inf)))
    sr = fr.service_request(ref, np.int64(5), "p1", "e1", "cp1", "spo2", ranges, "mon+thu", np.int64(2))
    body = fr.submission(ref, np.int64(12), "p1", "e1", SRS, None,
                         {"spo2": np.float32(93.6), "pulse": np.float32("nan")}, {}, T0)
    org = fr.organization(ref, "o1", "Aalborg", np.int64(851), "municipality")
    for resource in (sr, body, org):
        assert json.loads(json.dumps(resource)) == resource
    assert entries(body)[0]["resource"]["valueQuantity"]["value"] == 94
    assert fr.ranges_from_service_request(sr) == ranges
