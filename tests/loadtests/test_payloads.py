"""The load test's FHIR bodies equal the server's own builders (the client cannot drift)."""

from __future__ import annotations

import math

from loadtests import payloads
from twin.server import fhir as fr

BASE = "http://127.0.0.1:8080"


def test_submission_equals_the_servers_builder():
    row = {"citizen_id": 7, "spo2": 91.6, "pulse": 88.4, "weight": 72.449997, "sbp": math.nan, "dbp": math.nan,
           "has_questionnaire": True, "q_dyspnoea": True, "q_cough": False, "q_sputum": True}
    values = payloads.session_readings(row)
    assert values == {"spo2": 92, "pulse": 88, "weight": 72.4}  # canonical: device decimals, skipped left out
    answers = payloads.session_answers(row, ("dyspnoea", "cough", "sputum"))
    ours = payloads.submission(BASE, lambda entry: payloads.submission_key("", 123, entry), 7, values, answers,
                               "q-copd", "2026-03-02T08:00:00+01:00")
    srs = {m: f"sr-7-{m}" for m in values} | {"questionnaire": "sr-7-questionnaire"}
    theirs = fr.submission(fr.Refs(BASE), 123, "p-7", "e-7", srs, "q-copd", values, answers,
                           "2026-03-02T08:00:00+01:00")
    assert ours == theirs


def test_a_run_tag_makes_new_keys_but_upload_and_duplicate_share_theirs():
    assert payloads.submission_key("", 5, "spo2") == fr.submission_key(5, "spo2")
    assert payloads.submission_key("run2", 5, "spo2") != payloads.submission_key("", 5, "spo2")
    assert payloads.submission_key("run2", 5, "spo2") == payloads.submission_key("run2", 5, "spo2")


def test_assessment_and_message_equal_the_servers_builders():
    refs = fr.Refs(BASE)
    at = "2026-03-02T10:00:00+01:00"
    theirs = fr.clinical_impression_assessment(refs, None, "p-7", "e-7", "tri-1", "pr-0-1", at, "approved",
                                               "Assessed in the load test replay")
    assert payloads.assessment(BASE, 7, "tri-1", "pr-0-1", at) == theirs
    message = payloads.message_to_citizen(BASE, 7, "pr-0-1", at)
    expected = fr.communication(refs, None, "p-7", "e-7", refs.url("Practitioner", "pr-0-1"),
                                refs.url("Patient", "p-7"), message["payload"][0]["contentString"], at)
    assert message == expected
