"""Exacerbations, deaths and dropout: the events that shape a citizen's year.

The treated-exacerbation hazard of citizen *i* on day *t* is

    base_rate × rate_ratio_i × season(t) × (cluster_hazard_ratio if t is within the cluster window)

where ``rate_ratio_i`` is the GOLD-grade ratio times a gamma frailty (between-patient
heterogeneity, X7), ``season(t) = 1 + A·cos(2π(day_of_year − peak)/365.25)`` (X12–X13), and the
cluster window runs for ``cluster_window_days`` after recovery from the previous event (temporal
clustering, X14–X15). A citizen in an exacerbation is not at risk of a new one until recovered.

Because recovery and clustering make each citizen's history depend on its past, the process is
stepped **day by day, vectorised over citizens** (one Bernoulli draw per citizen-day). A warm-up of
``WARMUP_DAYS`` before day 0 puts the day-0 caseload in a steady state (ongoing exacerbations,
clustering windows). Each event gets an onset type (sudden/gradual, X16), a prodrome length, a
recovery time (lognormal plus a long tail, X17), hospitalisation (X8/X9) and peak physiological
deltas (F10). Deaths: a background hazard growing with age, plus death within 30 days of a
hospital admission (P12–P13). Dropout: a constant withdrawal hazard (P15). The caseload at day 0
is everyone enrolled before it: the warm-up runs their exacerbations, not their exits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from twin.clinical.population import DAYS_PER_YEAR, Citizens
from twin.scenario import Deltas, Disease, Exacerbations

WARMUP_DAYS = 120
EXIT_NONE, EXIT_DEATH, EXIT_DROPOUT = 0, 1, 2
EXIT_REASONS = ("none", "death", "dropout")
DELTA_VITALS = ("spo2", "pulse", "weight", "sbp")


@dataclass
class Episodes:
    """Exacerbations (or decompensations), one entry per event, sorted by citizen then onset."""

    citizen: np.ndarray  # int index into the cohort's Citizens
    onset_day: np.ndarray  # float day of onset (treatment start), relative to the run start
    severe: np.ndarray  # bool: hospitalised
    sudden: np.ndarray  # bool: sudden onset (symptoms start on the onset day)
    prodrome_days: np.ndarray  # physiological ramp starts this many days before onset
    symptom_lead_days: np.ndarray  # symptoms start this many days before onset
    recovery_days: np.ndarray  # onset -> recovered
    admission_days: np.ndarray  # days in hospital from onset (0 if not admitted): no home sessions then
    clustered: np.ndarray  # bool: began inside the cluster window of a previous event
    peak: dict[str, np.ndarray]  # vital -> peak change from baseline

    def __len__(self) -> int:
        return len(self.citizen)


@dataclass
class Exits:
    exit_day: np.ndarray  # float, inf if the citizen stays to the end
    reason: np.ndarray  # EXIT_NONE | EXIT_DEATH | EXIT_DROPOUT


def season_factor(day: np.ndarray | float, start: dt.date, ex: Exacerbations) -> np.ndarray:
    """The seasonal multiplier of the exacerbation rate (mean 1 over a year)."""
    doy = (np.asarray(day, dtype=float) + start.timetuple().tm_yday - 1) % DAYS_PER_YEAR + 1
    return 1 + ex.seasonal_amplitude * np.cos(2 * np.pi * (doy - ex.seasonal_peak_day_of_year) / DAYS_PER_YEAR)


def draw_recovery_days(rng: np.random.Generator, ex: Exacerbations, n: int) -> np.ndarray:
    days = rng.lognormal(np.log(ex.recovery_median_days), ex.recovery_sigma, n)
    tail = rng.random(n) < ex.recovery_tail_share
    days[tail] = rng.uniform(ex.recovery_tail_min_days, ex.recovery_tail_max_days, int(tail.sum()))
    return days


def draw_peaks(rng: np.random.Generator, deltas: Deltas, n: int) -> dict[str, np.ndarray]:
    return {v: rng.normal(getattr(deltas, f"{v}_mean"), getattr(deltas, f"{v}_sd"), n) for v in DELTA_VITALS}


def simulate_exacerbations(citizens: Citizens, disease: Disease, start: dt.date, duration_days: int,
                           rng_days: np.random.Generator, rng_events: np.random.Generator,
                           rng_exits: np.random.Generator) -> tuple[Episodes, Exits]:
    """Step the cohort day by day from the warm-up to the end of the run."""
    ex, xs = disease.exacerbations, disease.exits
    n = len(citizens)
    first_day = -WARMUP_DAYS
    # Exits that do not depend on events are memoryless, so they are drawn from day 0 for the
    # caseload already enrolled (the day-0 caseload is, by definition, everyone present at day 0:
    # the warm-up shapes their exacerbation state but removes nobody) and from enrolment otherwise.
    t0 = np.maximum(citizens.enrol_day, 0.0)
    age_at_t0 = citizens.age_years + (t0 - citizens.enrol_day) / DAYS_PER_YEAR
    age_factor = xs.death_rate_ratio_per_year_of_age ** (age_at_t0 - 70)
    death_rate = xs.background_death_rate_per_year * age_factor / DAYS_PER_YEAR
    death_day = t0 + rng_exits.exponential(1, n) / np.maximum(death_rate, 1e-12)
    dropout_day = t0 + (rng_exits.exponential(1 / xs.dropout_rate_per_year * DAYS_PER_YEAR, n)
                        if xs.dropout_rate_per_year > 0 else np.inf)
    exit_day = np.minimum(death_day, dropout_day)
    reason = np.where(death_day <= dropout_day, EXIT_DEATH, EXIT_DROPOUT)
    p30 = xs.death_within_30d_of_admission_prob

    busy_until = np.full(n, -np.inf)  # in an exacerbation until this day
    cluster_until = np.full(n, -np.inf)
    base = ex.base_rate_per_year / DAYS_PER_YEAR * citizens.rate_ratio
    days = np.arange(first_day, duration_days)
    seasons = season_factor(days, start, ex)
    chunks = []
    for d, season in zip(days, seasons, strict=True):
        u = rng_days.random(n)  # one draw per citizen-day, whoever is at risk: common random numbers
        at_risk = (citizens.enrol_day <= d) & (d < exit_day) & (busy_until <= d)
        hazard = base * season * np.where(cluster_until > d, ex.cluster_hazard_ratio, 1.0)
        idx = np.flatnonzero(at_risk & (u < -np.expm1(-hazard)))
        if idx.size == 0:
            continue
        m = idx.size
        onset = d + rng_events.random(m)
        recovery = draw_recovery_days(rng_events, ex, m)
        severe = rng_events.random(m) < ex.hospitalisation_prob
        clustered = cluster_until[idx] > d
        busy_until[idx] = onset + recovery
        cluster_until[idx] = onset + recovery + ex.cluster_window_days
        # Death within 30 days of a hospital admission (P13), by age at the admission.
        age = citizens.age_years[idx] + np.maximum(onset - citizens.enrol_day[idx], 0) / DAYS_PER_YEAR
        p_death = np.where(age < 60, p30["under_60"], np.where(age < 80, p30["60_to_79"], p30["80_plus"]))
        dies = severe & (rng_events.random(m) < p_death)
        death = onset + rng_events.uniform(0, 30, m)
        earlier = dies & (death < exit_day[idx]) & (death >= 0)  # nobody of the day-0 caseload dies before day 0
        exit_day[idx[earlier]] = death[earlier]
        reason[idx[earlier]] = EXIT_DEATH
        chunks.append((idx, onset, recovery, severe, clustered))

    if chunks:
        cit, onset, recovery, severe, clustered = (np.concatenate(c) for c in zip(*chunks, strict=True))
    else:
        cit, onset, recovery = np.zeros(0, int), np.zeros(0), np.zeros(0)
        severe, clustered = np.zeros(0, bool), np.zeros(0, bool)
    order = np.lexsort((onset, cit))
    cit, onset, recovery, severe, clustered = cit[order], onset[order], recovery[order], severe[order], clustered[order]
    m = cit.size
    sudden = rng_events.random(m) < ex.sudden_onset_share
    prodrome = np.where(sudden, ex.prodrome_days_sudden,
                        rng_events.uniform(ex.prodrome_days_gradual_min, ex.prodrome_days_gradual_max, m))
    lead = np.where(sudden, 0.0, rng_events.lognormal(np.log(max(ex.symptom_lead_days_gradual, 1e-9)),
                                                      ex.symptom_lead_days_gradual_sigma, m))
    admission = np.where(severe, rng_events.lognormal(np.log(ex.admission_days_median), ex.admission_days_sigma, m), 0.0)
    moderate_peak, severe_peak = draw_peaks(rng_events, ex.moderate, m), draw_peaks(rng_events, ex.severe, m)
    peak = {v: np.where(severe, severe_peak[v], moderate_peak[v]) for v in DELTA_VITALS}
    episodes = Episodes(cit, onset, severe, sudden, prodrome, lead, recovery, admission, clustered, peak)
    return episodes, Exits(exit_day, reason)
