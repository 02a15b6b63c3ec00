"""The citizens of a cohort: who they are, where they live, how they measure.

Everything here is drawn once per citizen, vectorised: age, sex, severity (spirometric GOLD grade
within GOLD group D), exacerbation frailty (a gamma multiplier on the rate, mean 1), baselines of
SpO2/pulse/weight/blood pressure and their measuring devices' biases, adherence, regime and agreed
weekdays, the habitual time of day, and the home organisation. Thresholds are individualised from
the *observed* baseline (true baseline + device bias), as a GP sets them from what the patient's
own device shows.

The cohort holds the steady-state caseload at day 0 (enrolled some time before, exponential
years-enrolled) plus the citizens enrolled during the run (Poisson count, uniform enrolment day).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import stats

from twin.organisations import Organisations
from twin.rules.thresholds import individualise_arrays
from twin.scenario import FREQUENCIES, WEEKDAYS, Cohort, Devices, Disease, Regime, Rules, Vital

DAYS_PER_YEAR = 365.25
MEASURED_VITALS = ("spo2", "pulse", "weight", "sbp", "dbp")


@dataclass
class Citizens:
    """One array per attribute, one entry per citizen of the cohort (index = position)."""

    enrol_day: np.ndarray  # float days from the run start; negative: enrolled before it
    age_years: np.ndarray  # age at enrolment
    female: np.ndarray  # bool
    severity: np.ndarray  # int index into disease.population.severity_shares
    frailty: np.ndarray  # gamma(shape k, mean 1)
    rate_ratio: np.ndarray  # severity ratio (cohort mean 1) x frailty
    org: np.ndarray  # int index into Organisations: home municipality, or region for the sickest
    municipality: np.ndarray  # int index of the home municipality
    sessions_per_week: np.ndarray  # int 7, 3, 2 or 1 after run-in
    weekday_bits: np.ndarray  # uint8 bit w set = measures on weekday w (0 = Monday)
    adherence: np.ndarray  # P(a scheduled session is done), at enrolment
    habit_min_of_day: np.ndarray  # usual minute of the day for measuring
    measures_bp: np.ndarray  # bool: blood pressure is part of the kit (regional practice, T5)
    baseline: dict[str, np.ndarray]  # true physiological baseline per vital
    device_bias: dict[str, np.ndarray]  # per-citizen device bias per vital
    thresholds: dict[str, dict[str, np.ndarray]]  # vital -> red_low/yellow_low/yellow_high/red_high

    def __len__(self) -> int:
        return len(self.enrol_day)

    def subset(self, mask: np.ndarray) -> Citizens:
        def take(v):
            if isinstance(v, dict):
                return {k: take(x) for k, x in v.items()}
            return v[mask]
        return Citizens(**{f.name: take(getattr(self, f.name)) for f in fields(self)})


def truncated_normal(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float, n: int) -> np.ndarray:
    if sd == 0:
        return np.full(n, float(mean))
    a, b = (lo - mean) / sd, (hi - mean) / sd
    return stats.truncnorm.rvs(a, b, loc=mean, scale=sd, size=n, random_state=rng)


def beta_from_mean_sd(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
    if sd == 0 or mean in (0.0, 1.0):
        return np.full(n, float(mean))
    common = mean * (1 - mean) / sd**2 - 1
    if common <= 0:
        raise ValueError(f"adherence sd {sd} is too large for mean {mean}: a Beta needs sd^2 < mean(1-mean)")
    return rng.beta(mean * common, (1 - mean) * common, size=n)


def _pattern_bits(pattern: str) -> int:
    return sum(1 << WEEKDAYS.index(day) for day in pattern.split("+"))


def sample_citizens(cohort: Cohort, disease: Disease, regime: Regime, rules: Rules, devices: Devices,
                    orgs: Organisations, duration_days: int, rng: np.random.Generator) -> Citizens:
    """Draw the cohort's citizens: the caseload at day 0 plus the year's enrolments."""
    pop = disease.population
    n_new = int(rng.poisson(cohort.enrolments_per_year * duration_days / DAYS_PER_YEAR))
    n0 = cohort.citizens
    n = n0 + n_new
    enrol_day = np.concatenate([
        -rng.exponential(pop.years_enrolled_mean * DAYS_PER_YEAR, n0) if pop.years_enrolled_mean > 0 else np.zeros(n0),
        np.sort(rng.uniform(0, duration_days, n_new)),
    ])
    age = truncated_normal(rng, pop.age_mean_years, pop.age_sd_years, pop.age_min_years, pop.age_max_years, n)
    female = rng.random(n) < pop.female_share

    severity_names = list(pop.severity_shares)
    shares = np.array([pop.severity_shares[s] for s in severity_names])
    severity = rng.choice(len(severity_names), size=n, p=shares)
    ratio = np.array([pop.severity_rate_ratio[s] for s in severity_names])
    ratio = ratio / (ratio @ shares)  # normalised: the cohort mean rate is the disease's base rate
    k = disease.exacerbations.frailty_gamma_shape
    frailty = rng.gamma(k, 1 / k, n)
    rate_ratio = ratio[severity] * frailty

    # Home: a municipality by population; the sickest regional_share are followed by its region.
    n_mun = orgs.n_municipalities
    weights = orgs.population[:n_mun].astype(float)
    if cohort.regions:
        weights = weights * np.isin(orgs.region[:n_mun], list(cohort.regions))
    if cohort.municipalities:
        weights = weights * np.isin(orgs.code[:n_mun], list(cohort.municipalities))
    if weights.sum() == 0:
        raise ValueError(f"cohort {cohort.name}: no municipality matches regions={cohort.regions} "
                         f"municipalities={cohort.municipalities}")
    weights = weights / weights.sum()
    municipality = rng.choice(n_mun, size=n, p=weights)
    org = municipality.copy()
    n_regional = int(round(cohort.regional_share * n))
    if n_regional:
        sickest = np.argsort(-rate_ratio, kind="stable")[:n_regional]
        org[sickest] = orgs.home_region_index()[municipality[sickest]]

    # Regime and agreed weekdays.
    freq_names = list(regime.mix)
    freq_idx = rng.choice(len(freq_names), size=n, p=[regime.mix[f] for f in freq_names])
    sessions_per_week = np.array([FREQUENCIES[f] for f in freq_names])[freq_idx]
    weekday_bits = np.full(n, 0x7F, dtype=np.uint8)  # daily: every weekday
    for fi, fname in enumerate(freq_names):
        if fname == "daily":
            continue
        members = np.flatnonzero(freq_idx == fi)
        patterns = regime.weekday_patterns[fname]
        bits = np.array([_pattern_bits(p) for p in patterns], dtype=np.uint8)
        weekday_bits[members] = bits[rng.choice(len(bits), size=len(members), p=list(patterns.values()))]
    adherence = beta_from_mean_sd(rng, regime.adherence_mean, regime.adherence_sd, n)
    profile = np.array(regime.hour_profile)
    habit_min = rng.choice(24, size=n, p=profile / profile.sum()) * 60 + rng.uniform(0, 60, n)
    measures_bp = np.isin(orgs.region[municipality], list(regime.blood_pressure_regions))

    # Physiology and devices.
    baseline = {}
    for name, vital in (("spo2", disease.spo2_pct), ("pulse", disease.pulse_bpm), ("weight", disease.weight_kg),
                        ("sbp", disease.sbp_mmhg), ("dbp", disease.dbp_mmhg)):
        baseline[name] = _baseline(rng, vital, n)
    baseline["dbp"] = np.minimum(baseline["dbp"], baseline["sbp"] - disease.min_pulse_pressure_mmhg)
    cuff_bias = rng.normal(0, devices.bp_bias_sd_mmhg, n)
    device_bias = {
        "spo2": rng.normal(devices.spo2_bias_mean_pct, devices.spo2_bias_sd_pct, n),
        "pulse": rng.normal(0, devices.pulse_bias_sd_bpm, n),
        "weight": np.zeros(n),
        "sbp": cuff_bias,
        "dbp": cuff_bias * devices.dbp_error_per_sbp_error,
    }
    thresholds = {}
    for name in MEASURED_VITALS:
        if name not in rules.thresholds:
            continue
        observed = baseline[name] + device_bias[name]
        thresholds[name] = individualise_arrays(rules.standard(name), observed)

    return Citizens(enrol_day, age, female, severity, frailty, rate_ratio, org, municipality,
                    sessions_per_week, weekday_bits, adherence, habit_min, measures_bp, baseline,
                    device_bias, thresholds)


def _baseline(rng: np.random.Generator, vital: Vital, n: int) -> np.ndarray:
    return truncated_normal(rng, vital.mean, vital.sd, vital.min, vital.max, n)
