"""Scenario files: every shipped file validates; bad ones fail naming the field and the allowed range."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from twin.scenario import get_path, load_scenario, replace_path, resolve
from twin.validation import ScenarioError

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path):
    scenario = load_scenario(path)
    assert scenario.citizens > 0
    assert scenario.run.name == path.stem


def test_required_scenarios_exist():
    names = {p.stem for p in SCENARIO_DIR.glob("*.toml")}
    assert {"kol-10k", "pilot-100", "pilot-1000", "winter", "daily-regime", "national-growth"} <= names


def test_kol10k_is_ten_thousand_citizens_for_a_year(kol10k):
    assert kol10k.citizens == 10_000
    assert kol10k.run.duration_days == 365


def test_national_growth_has_two_disease_areas():
    s = load_scenario(SCENARIO_DIR / "national-growth.toml")
    assert s.citizens == 100_000
    assert {c.disease for c in s.cohorts} == {"copd", "heart-failure"}
    assert s.regimes["heart-failure-standard"].questions != s.regimes["copd-standard"].questions


def test_daily_regime_is_daily_with_fixed_thresholds():
    s = load_scenario(SCENARIO_DIR / "daily-regime.toml")
    assert dict(s.regimes[s.cohorts[0].regime].mix) == {"daily": 1.0}
    assert s.rules[s.cohorts[0].rules].individualise is False


BAD = [
    ({"run": {"sed": 1}}, "run: unknown key(s) sed"),
    ({"run": {"seed": -1}}, "run.seed: -1 is out of range; allowed between 0"),
    ({"run": {"seed": "one"}}, "run.seed: expected int, got str"),
    ({"run": {"duration_days": 1.5}}, "run.duration_days: expected int, got float"),
    ({"run": {"start_date": "2026-13-01"}}, "start_date: '2026-13-01' is not an ISO date"),
    ({"diseases": {"copd": {"exacerbations": {"base_rate_per_year": -0.5}}}},
     "diseases.copd.exacerbations.base_rate_per_year: -0.5 is out of range; allowed between 0 and 50"),
    ({"diseases": {"copd": {"exacerbations": {"hospitalisation_prob": 1.2}}}},
     "diseases.copd.exacerbations.hospitalisation_prob: 1.2 is out of range; allowed between 0 and 1"),
    ({"diseases": {"copd": {"population": {"female_share": True}}}},
     "diseases.copd.population.female_share: expected float, got bool"),
    ({"regimes": {"copd-standard": {"mix": {"twice_weekly": 0.6, "weekly": 0.3, "daily": 0.05}}}},
     "regimes.copd-standard.mix: shares must sum to 1, they sum to 0.95"),
    ({"regimes": {"copd-standard": {"mix": {"fortnightly": 1.0}}}},
     "regimes.copd-standard.mix: unknown key 'fortnightly'"),
    ({"regimes": {"copd-standard": {"hour_profile": [1.0]}}}, "hour_profile: needs 24 shares"),
    ({"regimes": {"copd-standard": {"weekday_patterns": {"twice_weekly": {"mon+mon": 1.0}}}}},
     "weekday_patterns.twice_weekly.mon+mon: write distinct weekdays"),
    ({"regimes": {"copd-standard": {"measurements": ["spo2", "temperature"]}}},
     "regimes.copd-standard.measurements[1]: 'temperature' is not allowed"),
    ({"rules": {"copd-national": {"thresholds": {"spo2": {"red_low": 95.0}}}}}, "reference ranges must nest"),
    ({"rules": {"copd-national": {"questions": [{"all_yes": ["dyspnoea"], "colour": "purple"}]}}},
     "colour: 'purple' is not allowed; choose one of green, yellow, red"),
    ({"care": {"shift_end_hour": 7.0}}, "shift_end_hour must be after shift_start_hour"),
    ({"care": {"review_days": ["sat"]}}, "review_days must be working_days"),
    ({"cohorts": [{"name": "x", "disease": "asthma", "regime": "copd-standard", "rules": "copd-national",
                   "citizens": 10, "enrolments_per_year": 0.0, "regional_share": 0.1}]},
     "cohorts[0].disease: 'asthma' is not defined"),
    ({"cohorts": []}, "cohorts: at least one cohort is needed"),
    ({"cohorts": [{"name": "x", "disease": "copd", "regime": "copd-standard", "rules": "copd-national",
                   "citizens": 10, "enrolments_per_year": 0.0, "regional_share": 0.1, "municipalities": [999]}]},
     "municipalities: unknown code(s) [999]"),
    ({"cohorts": [{"name": "x", "disease": "copd", "regime": "copd-standard", "rules": "copd-national",
                   "citizens": 10, "enrolments_per_year": 0.0, "regional_share": 0.1, "regions": ["Jylland"]}]},
     "regions: unknown ['Jylland']"),
    ({"uploads": {"retry_prob": float("nan")}}, "uploads.retry_prob: NaN is not allowed"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[m for _, m in BAD])
def test_bad_values_name_the_field_and_range(override, message):
    with pytest.raises(ScenarioError) as exc:
        resolve(override)
    assert message in str(exc.value)


def test_bad_file_names_the_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[run\nseed = 1\n")
    with pytest.raises(ScenarioError, match="broken.toml: not valid TOML"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "missing.toml")


def test_scenario_is_frozen(kol10k):
    with pytest.raises(AttributeError):
        kol10k.run.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        kol10k.regimes["copd-standard"].mix["daily"] = 1.0  # type: ignore[index]


def test_replace_path_revalidates(kol10k):
    changed = replace_path(kol10k, "rules.copd-national.thresholds.spo2.yellow_low", 92.0)
    assert get_path(changed, "rules.copd-national.thresholds.spo2.yellow_low") == 92.0
    assert get_path(kol10k, "rules.copd-national.thresholds.spo2.yellow_low") == 91.0
    with pytest.raises(ScenarioError, match="reference ranges must nest"):
        replace_path(kol10k, "rules.copd-national.thresholds.spo2.yellow_low", 80.0)
    with pytest.raises(ScenarioError, match="no such parameter"):
        replace_path(kol10k, "rules.copd-national.thresholds.spo2.nope", 1.0)


def test_infinite_thresholds_round_trip(kol10k, tmp_path):
    from twin.results import write_scenario

    p = tmp_path / "scenario.toml"
    write_scenario(kol10k, p)
    again = load_scenario(p)
    assert again == kol10k or again.rules["copd-national"].thresholds["weight"].red_high == math.inf
    assert again.rules["copd-national"].thresholds["weight"].red_high == math.inf


def test_a_share_table_in_a_scenario_replaces_the_default_one():
    s = resolve({"regimes": {"copd-standard": {"mix": {"daily": 1.0}}}})
    assert dict(s.regimes["copd-standard"].mix) == {"daily": 1.0}
    # …while sibling tables still merge key by key
    s = resolve({"diseases": {"copd": {"exacerbations": {"seasonal_amplitude": 0.1}}}})
    assert s.diseases["copd"].exacerbations.seasonal_amplitude == 0.1
    assert s.diseases["copd"].exacerbations.cluster_window_days == 56
