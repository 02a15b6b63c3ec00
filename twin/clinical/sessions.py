"""Citizen sessions: when each citizen sits down to measure, and when the upload arrives.

A session is scheduled on the citizen's agreed weekdays (daily for everyone during the run-in
after enrolment, T2–T4; none while the citizen is in hospital), done with the citizen's adherence (a Beta draw per citizen that declines
over the first year, T8; a little lower at weekends), and joined by *extra* sessions on days the
citizen feels worse (in an exacerbation or a bad spell). It starts near the citizen's habitual time
of day (hour profile T9), lasts ``session_duration_min`` (T6), and is uploaded at its end. A small
share of uploads fail and are retried later (lognormal delay), and a few are sent twice (D9): the
duplicate is the idempotency case the API must absorb.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from twin.clinical.bad_spells import Spells
from twin.clinical.exacerbations import Episodes
from twin.clinical.population import DAYS_PER_YEAR, Citizens
from twin.scenario import Regime, Uploads

KIND_RUN_IN, KIND_SCHEDULED, KIND_EXTRA = 0, 1, 2
SESSION_KINDS = ("run_in", "scheduled", "extra")
MINUTES_PER_DAY = 1440.0


@dataclass
class Sessions:
    citizen: np.ndarray  # int index into the cohort's Citizens
    start_day: np.ndarray  # float days from the run start
    kind: np.ndarray  # int8 KIND_*
    upload_day: np.ndarray  # the successful upload (end of session, or after retries)
    attempts: np.ndarray  # int8: 1 + failed upload attempts
    duplicate_day: np.ndarray  # a second, identical upload (NaN if none)
    scheduled_due: int  # scheduled and run-in sessions that were due (for adherence)

    def __len__(self) -> int:
        return len(self.citizen)


def symptomatic_grid(n: int, duration_days: int, episodes: Episodes, spells: Spells) -> np.ndarray:
    """Boolean (citizen, day): the citizen has symptoms of an exacerbation or a bad spell that day."""
    return day_grid(n, duration_days, [
        (episodes.citizen, episodes.onset_day - episodes.symptom_lead_days, episodes.onset_day + episodes.recovery_days),
        (spells.citizen, spells.start_day, spells.start_day + spells.duration_days)])


def admitted_grid(n: int, duration_days: int, episodes: Episodes) -> np.ndarray:
    """Boolean (citizen, day): in hospital that day (no home measurement)."""
    admitted = episodes.admission_days > 0
    return day_grid(n, duration_days, [(episodes.citizen[admitted], episodes.onset_day[admitted],
                                        episodes.onset_day[admitted] + episodes.admission_days[admitted])])


def day_grid(n: int, duration_days: int, intervals) -> np.ndarray:
    """Boolean (citizen, day) covered by any of the (citizen, start_day, end_day) intervals."""
    diff = np.zeros((n, duration_days + 1), dtype=np.int16)  # int16: overlapping episodes are few
    for cit, s, e in intervals:
        s_day = np.clip(np.floor(s), 0, duration_days).astype(np.int64)
        e_day = np.clip(np.ceil(e), 0, duration_days).astype(np.int64)
        keep = e_day > s_day
        np.add.at(diff, (cit[keep], s_day[keep]), 1)
        np.add.at(diff, (cit[keep], e_day[keep]), -1)
    return np.cumsum(diff[:, :duration_days], axis=1, dtype=np.int16) > 0


CHUNK_CITIZENS = 16_384  # citizens per (citizen, day) grid block: bounds memory at 100,000+ citizens


def _due_days(citizens: Citizens, exit_day: np.ndarray, regime: Regime, start: dt.date, duration_days: int,
              symptomatic: np.ndarray, admitted: np.ndarray, lo: int, hi: int):
    """For citizens lo..hi: (citizen, day) of due sessions (with run-in flag) and of symptomatic free days."""
    day = np.arange(duration_days, dtype=np.int32)
    weekday = ((start.weekday() + day) % 7).astype(np.uint8)
    enrol = np.floor(citizens.enrol_day[lo:hi]).astype(np.int32)
    since_enrol = day[None, :] - enrol[:, None]  # days since the training day
    last = np.minimum(np.floor(np.minimum(exit_day[lo:hi], duration_days)), duration_days).astype(np.int32)
    active = (since_enrol >= 1) & (day[None, :] < last[:, None]) & ~admitted[lo:hi]
    run_in = active & (since_enrol <= regime.run_in_days)
    on_pattern = ((citizens.weekday_bits[lo:hi, None] >> weekday[None, :]) & 1).astype(bool)
    due = active & (run_in | on_pattern)
    ci, di = np.nonzero(due)
    ei, ed = np.nonzero(active & symptomatic[lo:hi] & ~due)
    return ci + lo, di, run_in[ci, di], (since_enrol[ci, di]).astype(np.float64), ei + lo, ed


def schedule_sessions(citizens: Citizens, exit_day: np.ndarray, regime: Regime, uploads: Uploads,
                      start: dt.date, duration_days: int, symptomatic: np.ndarray, admitted: np.ndarray,
                      rng: np.random.Generator) -> Sessions:
    n = len(citizens)
    blocks = [_due_days(citizens, exit_day, regime, start, duration_days, symptomatic, admitted, lo,
                        min(lo + CHUNK_CITIZENS, n))
              for lo in range(0, n, CHUNK_CITIZENS)]
    ci, di, run_in, since, ei, ed = (np.concatenate(parts) for parts in zip(*blocks, strict=True)) if blocks else (
        np.zeros(0, int),) * 6
    weekday = (start.weekday() + di) % 7

    decline = regime.adherence_decline_first_year * np.clip(since / DAYS_PER_YEAR, 0, 1)
    p_done = np.clip(citizens.adherence[ci] - decline, 0, 1)
    p_done = np.where(weekday >= 5, p_done * regime.weekend_adherence_ratio, p_done)
    done = rng.random(ci.size) < p_done
    kind = np.where(run_in, KIND_RUN_IN, KIND_SCHEDULED).astype(np.int8)
    scheduled_due = int(ci.size)
    ci, di, kind = ci[done], di[done], kind[done]

    # Extra sessions on symptomatic days that had no session due.
    extra = rng.random(ei.size) < regime.extra_session_prob_per_symptomatic_day
    ei, ed = ei[extra], ed[extra]

    cit = np.concatenate([ci, ei])
    d = np.concatenate([di, ed]).astype(float)
    kind = np.concatenate([kind, np.full(ei.size, KIND_EXTRA, dtype=np.int8)])
    minute = np.clip(citizens.habit_min_of_day[cit] + rng.normal(0, regime.session_time_sd_min, cit.size),
                     regime.earliest_session_hour * 60, regime.latest_session_hour * 60)
    start_day = d + minute / MINUTES_PER_DAY
    order = np.argsort(start_day, kind="stable")
    cit, start_day, kind = cit[order], start_day[order], kind[order]

    end_day = start_day + regime.session_duration_min / MINUTES_PER_DAY
    # Each attempt fails with retry_prob; the app waits (lognormal) and tries again, and the last
    # permitted attempt gets through.
    failures = np.minimum(rng.geometric(1 - uploads.retry_prob, cit.size) - 1, uploads.max_attempts - 1)
    retried = np.flatnonzero(failures > 0)
    waits_min = rng.lognormal(np.log(max(uploads.retry_delay_median_min, 1e-9)), uploads.retry_delay_sigma,
                              (retried.size, max(uploads.max_attempts - 1, 1)))
    delay_min = np.zeros(cit.size)
    delay_min[retried] = (waits_min * (np.arange(waits_min.shape[1]) < failures[retried, None])).sum(axis=1)
    upload_day = end_day + delay_min / MINUTES_PER_DAY
    attempts = (failures + 1).astype(np.int8)
    duplicated = rng.random(cit.size) < uploads.duplicate_prob
    dup_s = rng.lognormal(np.log(max(uploads.duplicate_delay_median_s, 1e-9)), uploads.duplicate_delay_sigma, cit.size)
    duplicate_day = np.where(duplicated, upload_day + dup_s / 86_400, np.nan)
    return Sessions(cit, start_day, kind, upload_day, attempts, duplicate_day, scheduled_due)
