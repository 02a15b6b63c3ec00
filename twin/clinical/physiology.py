"""What the devices show: readings and questionnaire answers of each session.

A reading is the citizen's true baseline, plus the deviation caused by an exacerbation or a bad
spell at that moment, plus day-to-day biological variation, plus the device's own bias and noise,
rounded as the device reports it (F1–F7, D1–D6).

The exacerbation deviation follows the prodrome profile of F10: a linear ramp from
``prodrome_days`` before onset to the peak ``peak_days_after_onset`` after it, then an exponential
return to baseline over the recovery time (time constant recovery/3). A bad spell is a smaller,
symmetric bump over its duration. Symptoms depend on the citizen's state (stable, bad spell,
exacerbation from the first symptom day to recovery); answers within a session are correlated
through one shared "feeling worse" draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.clinical.bad_spells import Spells
from twin.clinical.exacerbations import DELTA_VITALS, Episodes
from twin.clinical.population import Citizens
from twin.scenario import Devices, Disease, Regime

TIME_OFFSET_DAYS = 1000.0  # makes every time positive for the (citizen, time) search keys
KEY_STRIDE = 10_000.0  # > the time span of a run in days (plus the offset)
STATE_STABLE, STATE_BAD_SPELL, STATE_EXACERBATION = 0, 1, 2
# What a home device can display (D1: oximeters report 0-100 %, accuracy specified down to 70 %);
# a device-limit, not a clinical parameter: readings outside are clipped as the device would.
DEVICE_RANGE = {"spo2": (50.0, 100.0), "pulse": (25.0, 250.0)}


@dataclass
class Readings:
    values: dict[str, np.ndarray]  # vital -> reading (NaN = not measured or skipped)
    spo2_repeats: np.ndarray  # int8: SpO2 readings taken (the last counts)
    answers: dict[str, np.ndarray]  # question -> bool (answered "worse than usual")
    state: np.ndarray  # int8 STATE_*: the citizen's true state at the session (for outcomes)
    deviation: dict[str, np.ndarray]  # vital -> true deviation from baseline at the session


def _keys(citizen: np.ndarray, t: np.ndarray) -> np.ndarray:
    return citizen.astype(float) * KEY_STRIDE + (t + TIME_OFFSET_DAYS)


def neighbours(ev_citizen, ev_time, q_citizen, q_time):
    """Index of each query's latest event at or before t (prev) and first after t (next); -1 if none."""
    keys = _keys(ev_citizen, ev_time)
    j = np.searchsorted(keys, _keys(q_citizen, q_time), side="right")
    prev = j - 1
    prev_ok = (prev >= 0) & (ev_citizen[np.clip(prev, 0, None)] == q_citizen) if len(ev_citizen) else np.zeros(len(q_citizen), bool)
    nxt_ok = (j < len(ev_citizen)) & (ev_citizen[np.clip(j, None, len(ev_citizen) - 1)] == q_citizen) if len(ev_citizen) else np.zeros(len(q_citizen), bool)
    return np.where(prev_ok, prev, -1), np.where(nxt_ok, j, -1)


def exacerbation_profile(tau: np.ndarray, prodrome: np.ndarray, peak_after: float, recovery: np.ndarray) -> np.ndarray:
    """Share of the peak deviation at ``tau`` days after onset (F10)."""
    ramp = np.clip((tau + prodrome) / (prodrome + peak_after), 0, 1)
    decay = np.exp(-np.clip(tau - peak_after, 0, None) / np.maximum(recovery / 3, 0.5))
    return np.where(tau < peak_after, ramp, decay)


def episode_deviation(episodes: Episodes, peak_after: float, citizen: np.ndarray, t: np.ndarray):
    """True deviation per vital and whether the citizen is symptomatic with an exacerbation."""
    prev, nxt = neighbours(episodes.citizen, episodes.onset_day, citizen, t)
    dev = {v: np.zeros(len(t)) for v in DELTA_VITALS}
    symptomatic = np.zeros(len(t), bool)
    for idx in (prev, nxt):
        ok = idx >= 0
        i = idx[ok]
        tau = t[ok] - episodes.onset_day[i]
        share = exacerbation_profile(tau, episodes.prodrome_days[i], peak_after, episodes.recovery_days[i])
        for v in DELTA_VITALS:
            dev[v][ok] += share * episodes.peak[v][i]
        symptomatic[ok] |= (tau >= -episodes.symptom_lead_days[i]) & (tau < episodes.recovery_days[i])
    return dev, symptomatic


def spell_deviation(spells: Spells, citizen: np.ndarray, t: np.ndarray):
    prev, _ = neighbours(spells.citizen, spells.start_day, citizen, t)
    ok = prev >= 0
    i = prev[ok]
    phase = (t[ok] - spells.start_day[i]) / spells.duration_days[i]
    inside = phase < 1
    bump = np.where(inside, np.sin(np.pi * np.clip(phase, 0, 1)), 0.0)
    dev = {v: np.zeros(len(t)) for v in DELTA_VITALS}
    for v in DELTA_VITALS:
        dev[v][ok] = bump * spells.peak[v][i]
    in_spell = np.zeros(len(t), bool)
    in_spell[ok] = inside
    return dev, in_spell


def take_readings(citizens: Citizens, citizen: np.ndarray, t: np.ndarray, episodes: Episodes, spells: Spells,
                  disease: Disease, regime: Regime, devices: Devices, rng: np.random.Generator) -> Readings:
    n = len(t)
    ex_dev, ex_sympt = episode_deviation(episodes, disease.exacerbations.peak_days_after_onset, citizen, t)
    bs_dev, in_spell = spell_deviation(spells, citizen, t)
    dev = {v: ex_dev[v] + bs_dev[v] for v in DELTA_VITALS}
    state = np.where(ex_sympt, STATE_EXACERBATION, np.where(in_spell, STATE_BAD_SPELL, STATE_STABLE)).astype(np.int8)
    base, bias = citizens.baseline, citizens.device_bias

    values: dict[str, np.ndarray] = {}
    true_spo2 = base["spo2"][citizen] + dev["spo2"] + rng.normal(0, disease.spo2_pct.daily_sd, n)
    repeats = np.where(rng.random(n) < regime.repeat_spo2_prob, 2, 1).astype(np.int8)
    # A repeated reading is a fresh device draw on the same biology; the later one counts (D7).
    spo2 = true_spo2 + bias["spo2"][citizen] + rng.normal(0, devices.spo2_noise_sd_pct, n)
    second = true_spo2 + bias["spo2"][citizen] + rng.normal(0, devices.spo2_noise_sd_pct, n)
    values["spo2"] = np.clip(np.round(np.where(repeats == 2, second, spo2)), *DEVICE_RANGE["spo2"])
    values["pulse"] = np.clip(np.round(base["pulse"][citizen] + dev["pulse"] + bias["pulse"][citizen]
                                       + rng.normal(0, disease.pulse_bpm.daily_sd, n)
                                       + rng.normal(0, devices.pulse_noise_sd_bpm, n)), *DEVICE_RANGE["pulse"])
    values["weight"] = np.round(base["weight"][citizen] + dev["weight"] + rng.normal(0, disease.weight_kg.daily_sd, n)
                                + rng.normal(0, devices.weight_noise_sd_kg, n), 1)
    values["sbp"] = np.round(base["sbp"][citizen] + dev["sbp"] + bias["sbp"][citizen]
                             + rng.normal(0, disease.sbp_mmhg.daily_sd, n) + rng.normal(0, devices.bp_noise_sd_mmhg, n))
    values["dbp"] = np.round(base["dbp"][citizen] + disease.dbp_change_per_sbp_change * dev["sbp"]
                             + bias["dbp"][citizen] + rng.normal(0, disease.dbp_mmhg.daily_sd, n)
                             + rng.normal(0, devices.bp_noise_sd_mmhg * devices.dbp_error_per_sbp_error, n))

    # Not in the kit, or skipped this time (D8). Oximeter and cuff give two values from one skip.
    skip = regime.skip_prob_per_measurement
    skipped = {"oximeter": rng.random(n) < skip, "scale": rng.random(n) < skip, "cuff": rng.random(n) < skip}
    device_of = {"spo2": "oximeter", "pulse": "oximeter", "weight": "scale", "sbp": "cuff", "dbp": "cuff"}
    for v in values:
        missing = skipped[device_of[v]] | (v not in regime.measurements)
        if v in ("sbp", "dbp"):
            missing = missing | ~citizens.measures_bp[citizen]
        values[v] = np.where(missing, np.nan, values[v])
    repeats = np.where(np.isnan(values["spo2"]), 0, repeats).astype(np.int8)

    shared = rng.random(n)
    use_shared = rng.random(n) < disease.symptom_correlation
    answers = {}
    for q in regime.questions:
        probs = disease.symptoms[q]
        p = np.choose(state, [probs.stable, probs.bad_spell, probs.exacerbation])
        u = np.where(use_shared, shared, rng.random(n))
        answers[q] = u < p
    # Values stay float64 here: triage compares exactly these numbers, and the API, given the same
    # reading as decimal text, must reach exactly the same colour.
    return Readings(values, repeats, answers, state, {v: dev[v].astype(np.float32) for v in ("spo2", "pulse")})
