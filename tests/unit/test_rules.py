"""The shared triage rules: thresholds, individualisation, colours; scalar and vectorised agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.rules import (
    MEASUREMENTS,
    QuestionRule,
    ReferenceRanges,
    StandardThreshold,
    classify_answers,
    classify_value,
    classify_values,
    individualise,
    individualise_arrays,
    triage_session,
)

SPO2 = StandardThreshold(ReferenceRanges(88, 91, 100, 100), yellow_widen=2, red_widen=3.5, yellow_tighten_below=2.5,
                         red_tighten_below=3.5)
COPD_QUESTIONS = (QuestionRule(("dyspnoea",), "yellow"), QuestionRule(("dyspnoea", "cough"), "red"),
                  QuestionRule(("sputum",), "red"))


def test_codes_and_units_follow_the_implementation_guide():
    assert MEASUREMENTS["spo2"].code == "NPU03011" and MEASUREMENTS["spo2"].unit_ucum == "%"
    assert MEASUREMENTS["pulse"].code == "NPU21692" and MEASUREMENTS["pulse"].unit_ucum == "1/min"
    assert MEASUREMENTS["weight"].code == "NPU03804" and MEASUREMENTS["weight"].unit_ucum == "kg"
    assert MEASUREMENTS["sbp"].code == "DNK05472" and MEASUREMENTS["dbp"].code == "DNK05473"


@pytest.mark.parametrize("value,colour", [(95, "green"), (91, "green"), (90, "yellow"), (88, "yellow"),
                                          (87, "red"), (float("nan"), "green")])
def test_bounds_are_inclusive(value, colour):
    ranges = ReferenceRanges(88, 91, 100, 100)
    finding = triage_session({"spo2": value}, {"spo2": ranges}, {}, ())
    assert finding.colour == colour


BOUNDS = st.lists(st.floats(min_value=-50, max_value=400), min_size=4, max_size=4).map(sorted)


@settings(max_examples=300, deadline=None)
@given(BOUNDS, st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 100.0])),
                        min_size=1, max_size=10))
def test_one_reading_is_classified_as_the_vectorised_rules_do(bounds, values):
    r = ReferenceRanges(*bounds)
    values += list(bounds)  # the bounds themselves: inside
    vec = classify_values(np.array(values), r.red_low, r.yellow_low, r.yellow_high, r.red_high)
    assert [classify_value(v, r) for v in values] == vec.tolist()


def test_ranges_must_nest():
    with pytest.raises(ValueError, match="nest"):
        ReferenceRanges(90, 88, 100, 100)
    with pytest.raises(ValueError, match="widen must not exceed tighten"):
        StandardThreshold(ReferenceRanges(88, 91, 100, 100), yellow_widen=3, yellow_tighten_below=2)


def test_individualise_widens_for_a_low_baseline_and_tightens_for_a_high_one():
    low = individualise(SPO2, 89.0)  # baseline below the national yellow limit
    assert low.yellow_low == pytest.approx(87.0) and low.red_low == pytest.approx(85.5)
    high = individualise(SPO2, 97.0)  # 3 below baseline is yellow even though 94 > 91
    assert high.yellow_low == pytest.approx(94.5) and high.red_low == pytest.approx(93.5)
    mid = individualise(SPO2, 94.0)
    assert mid.yellow_low == pytest.approx(91.5)
    assert mid.red_low == pytest.approx(90.5)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=70, max_value=100))
def test_baseline_is_never_an_alarm_and_ranges_nest(baseline):
    r = individualise(SPO2, baseline)
    assert r.red_low <= r.yellow_low <= r.yellow_high <= r.red_high
    assert triage_session({"spo2": baseline}, {"spo2": r}, {}, ()).colour == "green"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(min_value=60, max_value=100), st.just(float("nan"))), min_size=1, max_size=20),
    st.floats(min_value=80, max_value=99),
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=20, max_size=20),
)
def test_scalar_and_vectorised_triage_agree(values, baseline, answers):
    """The API triages one session at a time, the twin a year at once: they must agree exactly."""
    r = individualise(SPO2, baseline)
    arrays = individualise_arrays(SPO2, np.full(len(values), baseline))
    vec = classify_values(np.array(values), arrays["red_low"], arrays["yellow_low"], arrays["yellow_high"],
                          arrays["red_high"])
    ans = {q: np.array([a[i] for a in answers[: len(values)]]) for i, q in enumerate(("dyspnoea", "cough", "sputum"))}
    vec = np.maximum(vec, classify_answers(ans, COPD_QUESTIONS))
    for k, v in enumerate(values):
        one = triage_session({"spo2": None if math.isnan(v) else v}, {"spo2": r},
                             {q: bool(ans[q][k]) for q in ans}, COPD_QUESTIONS)
        assert one.level == vec[k]


def test_tightening_is_per_side():
    high = individualise(SPO2, 97.0)
    assert high.yellow_high >= 100 and high.red_high >= 100  # a rise in SpO2 never flags
    pulse = StandardThreshold(ReferenceRanges(45, 50, 100, 120), yellow_widen=10, red_widen=20,
                              yellow_tighten_above=15, red_tighten_above=30)
    r = individualise(pulse, 70.0)
    assert (r.red_low, r.yellow_low, r.yellow_high, r.red_high) == (45, 50, 85, 100)


def test_questionnaire_significance():
    assert triage_session({}, {}, {"dyspnoea": True}, COPD_QUESTIONS).colour == "yellow"
    assert triage_session({}, {}, {"dyspnoea": True, "cough": True}, COPD_QUESTIONS).colour == "red"
    assert triage_session({}, {}, {"cough": True}, COPD_QUESTIONS).colour == "green"
    f = triage_session({"spo2": 85}, {"spo2": ReferenceRanges(88, 91, 100, 100)}, {"sputum": True}, COPD_QUESTIONS)
    assert f.colour == "red" and set(f.reasons) == {"spo2:red", "sputum:red"}


def test_a_rule_on_a_question_not_asked_never_fires():
    level = classify_answers({"dyspnoea": np.array([True])}, (QuestionRule(("oedema",), "red"),))
    assert level.tolist() == [0]
