"""Platform outages: the citizen apps buffer the submission and retry with backoff and full jitter.

While the platform is unreachable (an ``[[outages]]`` window of the scenario), every upload attempt
fails on the citizen's side and never reaches the server. The app keeps the measurement in its
buffer and tries again after a *capped exponential backoff with full jitter* (AWS Architecture
Blog, "Exponential Backoff And Jitter", 2015): before retry ``k`` (``k = 1, 2, …``) it waits

    wait_k ~ Uniform(0, min(cap, base · factor^(k-1)))

so no wait exceeds ``cap``, and the first attempt after the recovery lies within one ``cap`` of the
end of the outage. An attempt outside every outage gets through: that is the new upload time, and
the alert (a FUT Task) is created then. A measurement the app has held longer than
``buffer_keep_hours`` is discarded (it is stale for triage; the citizen measures again at the next
session): that submission is *lost*, and counted.

:func:`retry_through_outages` is pure and vectorised: one numpy step per retry round over the
sessions still waiting, all draws from the generator it is given (the twin passes its named
stream ``<cohort>/outage-retries``, so a run without an outage draws nothing from it and a run with
one leaves every other stream untouched: common random numbers with the no-outage run).

The catch-up is measured against that no-outage run: :func:`uploads_per_minute` counts uploads as
they arrived and as intended, and :func:`catch_up_minutes` is the time from the recovery until the
upload rate stays within ``CATCH_UP_TOLERANCE`` of the counterfactual (twin/outcomes.py and the
report's outage section use both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MINUTES_PER_DAY = 1440.0
S_PER_DAY = 86_400.0


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float  # the first wait's upper bound
    factor: float  # growth of the bound per retry
    cap_s: float  # no wait is longer than this
    keep_s: float  # the app discards a measurement buffered longer than this (np.inf: never)

    @classmethod
    def from_uploads(cls, uploads) -> RetryPolicy:
        return cls(uploads.outage_backoff_base_s, uploads.outage_backoff_factor, uploads.outage_backoff_cap_min * 60,
                   uploads.outage_buffer_keep_hours * 3600)


@dataclass
class Retried:
    upload_day: np.ndarray  # the attempt that got through (NaN: lost)
    failed_attempts: np.ndarray  # int64: attempts that fell in an outage (0 if the session met none)
    buffered: np.ndarray  # bool: the intended upload fell in an outage
    lost: np.ndarray  # bool: discarded after buffer_keep (upload_day NaN)


def in_outage(day: np.ndarray, windows_day: np.ndarray) -> np.ndarray:
    """Boolean: each time (days) lies in some ``[start, end)`` of the sorted, disjoint windows (k, 2)."""
    day = np.asarray(day, dtype=float)
    if len(windows_day) == 0:
        return np.zeros(day.shape, dtype=bool)
    k = np.searchsorted(windows_day[:, 0], day, side="right") - 1
    return (k >= 0) & (day < windows_day[np.clip(k, 0, None), 1])


def retry_through_outages(intended_day: np.ndarray, windows_day: np.ndarray, policy: RetryPolicy,
                          rng: np.random.Generator, max_rounds: int = 100_000) -> Retried:
    """Move every upload whose intended time falls in an outage to the app's first attempt after it.

    ``intended_day``: the upload times without the outage (days from the run start; NaN = none);
    ``windows_day``: outages as (start, end) rows in days, sorted and disjoint."""
    intended = np.asarray(intended_day, dtype=float)
    windows = np.asarray(windows_day, dtype=float).reshape(-1, 2)
    upload = intended.copy()
    failed = np.zeros(intended.shape, dtype=np.int64)
    buffered = np.isfinite(intended) & in_outage(intended, windows)
    lost = np.zeros(intended.shape, dtype=bool)
    waiting = np.flatnonzero(buffered)
    failed[waiting] = 1  # the first attempt, at the intended time, failed
    t = intended[waiting]
    retry = 1
    while waiting.size:
        if retry > max_rounds:
            raise RuntimeError("retry_through_outages: no progress; is an outage endless?")
        bound_s = min(policy.cap_s, policy.base_s * policy.factor ** (retry - 1))
        t = t + rng.uniform(0.0, bound_s, waiting.size) / S_PER_DAY
        expired = (t - intended[waiting]) * S_PER_DAY > policy.keep_s
        lost[waiting[expired]] = True
        upload[waiting[expired]] = np.nan
        down = ~expired & in_outage(t, windows)
        done = ~expired & ~down
        upload[waiting[done]] = t[done]
        failed[waiting[down]] += 1
        waiting, t = waiting[down], t[down]
        retry += 1
    return Retried(upload, failed, buffered, lost)


def outage_windows_day(scenario) -> np.ndarray:
    """The scenario's outages as sorted (start, end) rows in days from the run start."""
    start = scenario.run.start
    rows = sorted(((o.start_datetime - start).total_seconds() / S_PER_DAY,
                   (o.start_datetime - start).total_seconds() / S_PER_DAY + o.duration_hours / 24)
                  for o in scenario.outages)
    return np.array(rows, dtype=float).reshape(-1, 2)


# ------------------------------------------------------------------ the catch-up, as a figure
CATCH_UP_TOLERANCE = 0.10  # caught up: the upload rate is back within 10 % of the no-outage run ...
CATCH_UP_BLOCK_MIN = 5  # ... in every 5-minute block from then on (blocks aligned at the recovery)
CATCH_UP_HORIZON_H = 48.0  # look this far after the recovery


def uploads_per_minute(upload_day: np.ndarray, intended_day: np.ndarray, t0_day: float, t1_day: float) -> pd.DataFrame:
    """Uploads per minute in [t0, t1): ``uploads`` as they arrived and ``counterfactual`` (the
    intended times: the same run without the outage, common random numbers). ``minute`` counts
    from t0."""
    n = int(round((t1_day - t0_day) * MINUTES_PER_DAY))

    def count(day: np.ndarray) -> np.ndarray:
        m = np.floor((np.asarray(day, dtype=float) - t0_day) * MINUTES_PER_DAY + 1e-9)
        m = m[np.isfinite(m) & (m >= 0) & (m < n)].astype(np.int64)
        return np.bincount(m, minlength=n)[:n]

    return pd.DataFrame({"minute": np.arange(n), "uploads": count(upload_day), "counterfactual": count(intended_day)})


def catch_up_minutes(uploads: np.ndarray, counterfactual: np.ndarray, recovery_minute: int) -> float:
    """Minutes from the recovery until the upload rate stays within CATCH_UP_TOLERANCE of the
    counterfactual (per CATCH_UP_BLOCK_MIN-minute block, from then on); NaN if never within the data."""
    a = np.asarray(uploads, dtype=float)[recovery_minute:]
    c = np.asarray(counterfactual, dtype=float)[recovery_minute:]
    blocks = len(a) // CATCH_UP_BLOCK_MIN
    if blocks == 0:
        return float("nan")
    a = a[:blocks * CATCH_UP_BLOCK_MIN].reshape(blocks, -1).sum(axis=1)
    c = c[:blocks * CATCH_UP_BLOCK_MIN].reshape(blocks, -1).sum(axis=1)
    above = np.flatnonzero(a > (1 + CATCH_UP_TOLERANCE) * c)
    if above.size and above[-1] == blocks - 1:
        return float("nan")
    return float((above[-1] + 1) * CATCH_UP_BLOCK_MIN) if above.size else 0.0
